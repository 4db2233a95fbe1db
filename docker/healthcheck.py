#!/usr/bin/env python3
"""Docker HEALTHCHECK: Orthanc answers, its database answers, and the AI plugin is loaded.

Reads the HTTP port and the first registered user from the configuration the
image's entrypoint generated (/tmp/orthanc.json), like the image's own
/probes/test-aliveness.py, then asks for /changes?last (touches the database,
unlike /system) and /ai/status (only answers when the plugin registered).
Exit 0: healthy; 1: not.
"""
import base64
import json
import sys
import urllib.request

# The image's entrypoint writes the merged configuration here; another path can be given as argument.
CONFIGURATION = sys.argv[1] if len(sys.argv) > 1 else "/tmp/orthanc.json"


def main() -> int:
    port, authorization = 8042, None
    try:
        with open(CONFIGURATION, "rb") as file:
            config = json.load(file)
        port = int(config.get("HttpPort", port))
        users = config.get("RegisteredUsers") or {}
        if config.get("AuthenticationEnabled", True) and users:
            user, password = next(iter(users.items()))
            authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    except (OSError, ValueError):
        pass
    for path in ("/changes?last", "/ai/status"):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
        if authorization:
            request.add_header("Authorization", authorization)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                if answer.status != 200:
                    print(f"GET {path} → {answer.status}")
                    return 1
                if path == "/ai/status":
                    status = json.load(answer)
                    print(f"ok: queue {status.get('queueLength')}, predicted {status.get('predicted')}")
        except Exception as error:  # any failure is "unhealthy"
            print(f"GET {path} failed: {error}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
