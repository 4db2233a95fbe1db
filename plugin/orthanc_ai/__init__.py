"""Orthanc AI: classify every stored image with ONNX models and write the results into private tags.

The modules follow the data's path: ``orthanc_glue`` (Orthanc events and
routes) → ``work_queue`` → ``pipeline`` → ``file_prediction`` (in a worker thread
or a ``prediction_processes`` child): ``decoding`` → ``preprocessing`` →
``inference`` → ``private_tags``/``tagging`` → store back through ``orthanc_api``.
"""

__version__ = "0.1.0"
