"""Talking to Orthanc: its events, routes and REST API (the glue), and what an overwrite would lose."""
