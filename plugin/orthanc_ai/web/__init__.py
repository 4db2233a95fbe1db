"""The /ai REST routes and the Orthanc Explorer extension."""
