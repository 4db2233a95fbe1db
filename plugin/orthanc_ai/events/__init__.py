"""From Orthanc's events to predictions: the queue, the workers, the change-log replay and the deletion fence."""
