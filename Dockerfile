# Orthanc with the Orthanc AI plugin and the shipped models.
#
#   docker build -t orthanc-ai .
#   docker run -p 8042:8042 -p 4242:4242 -v orthanc-ai-db:/var/lib/orthanc/db orthanc-ai
#
# Base: the Orthanc Team's image (Orthanc, the Python plugin, the PostgreSQL plugins, Orthanc Explorer 2),
# pinned. 26.8.1: Orthanc 1.13.0, Python plugin 7.1, Python 3.14, OE2 1.14.1, Ubuntu 26.04 (orthanc-builder,
# tag 26.8.1: README-dockerhub.md and release-notes-docker-images.md; docs/deploy.md), the generation
# `make test-compat` tests as "Debian unstable".
# Its entrypoint builds /tmp/orthanc.json from /etc/orthanc/*.json, ORTHANC__* variables and
# ORTHANC_JSON, and loads the Python plugin because "PythonScript" is set (docs/deploy.md).
FROM orthancteam/orthanc:26.8.1

# The base image runs as root by default and ships an unprivileged "orthanc" user (uid/gid 999,
# owner of what its entrypoint writes); the build steps below run as root, Orthanc as 999.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# TCP_NODELAY: DCMTK sends DICOM without Nagle's delay (C-STORE is otherwise ~11 instances/s).
# OPENBLAS_NUM_THREADS / OMP_NUM_THREADS: numpy's BLAS must not start threads of its own inside
# Orthanc: the plugin's workers already run in parallel, and nested BLAS threads made the pipeline
# 2-4x more CPU-hungry (docs/benchmarks.md). The plugin's entry script defaults them to 1 as well.
ENV ORTHANC_AI_HOME=/opt/orthanc-ai \
    TCP_NODELAY=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    PYTHON_PLUGIN_ENABLED=true \
    PYTHONDONTWRITEBYTECODE=1

# The plugin's dependencies go into the image's own Python, the one the Python plugin embeds
# (no virtual environment: the entry script then uses the system site-packages). That Python is
# "externally managed" (PEP 668), hence --break-system-packages, as the image's release notes say.
COPY requirements.txt requirements-nodeps.txt ${ORTHANC_AI_HOME}/
RUN pip3 install --no-cache-dir --break-system-packages -r "${ORTHANC_AI_HOME}/requirements.txt" \
 && pip3 install --no-cache-dir --break-system-packages --no-deps -r "${ORTHANC_AI_HOME}/requirements-nodeps.txt"

# Only what runs: the plugin and the models (not training/, tests/, bench/; see .dockerignore).
COPY plugin/ ${ORTHANC_AI_HOME}/plugin/
COPY models/ ${ORTHANC_AI_HOME}/models/
COPY docker/check_image.py docker/healthcheck.py ${ORTHANC_AI_HOME}/docker/
COPY LICENSE ${ORTHANC_AI_HOME}/LICENSE
# Configuration read by the image's entrypoint; ORTHANC__* variables and ORTHANC_JSON override it.
COPY docker/orthanc-ai.json /etc/orthanc/orthanc-ai.json

# Fail the build, not Orthanc's start-up, if a dependency does not import, the configuration lacks a
# setting the plugin requires, or a model does not load.
RUN python3 "${ORTHANC_AI_HOME}/docker/check_image.py" "${ORTHANC_AI_HOME}" /etc/orthanc/orthanc-ai.json \
    && mkdir -p /var/lib/orthanc/db \
    && chown -R orthanc:orthanc /var/lib/orthanc \
    && chmod -R a+rX "${ORTHANC_AI_HOME}" /etc/orthanc

# The image's "orthanc" user, by number so that no name lookup is needed.
USER 999:999
VOLUME ["/var/lib/orthanc/db"]
EXPOSE 8042 4242

# Orthanc answers, its database answers (/changes) and the plugin is loaded (/ai/status).
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["python3", "/opt/orthanc-ai/docker/healthcheck.py"]
