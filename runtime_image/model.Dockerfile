# A model's image: the generic runtime plus one artifact (its manifest, module, program and protocol), and the
# packages its mapping code imports (the program's `requirements`).
# Built by kiln.image from a context of this file, artifact/ (the artifact folder) and deps/ (wheels fetched on
# the host, with requirements.txt, empty when there are none); the build reaches no package index.
ARG RUNTIME=kiln/runtime:latest
FROM ${RUNTIME}
COPY deps/ /tmp/deps/
USER root
# installed into the runtime's venv beside what it has (constraints: the runtime's own versions stay);
# pip runs from its wheel, since the runtime image carries no pip
RUN if [ -s /tmp/deps/requirements.txt ]; then \
      pip_wheel=$(echo /tmp/deps/pip-*.whl) \
      && /opt/kiln/bin/python "$pip_wheel/pip" install --no-cache-dir --no-index --disable-pip-version-check \
        --progress-bar off --find-links /tmp/deps -c /tmp/deps/constraints.txt -r /tmp/deps/requirements.txt \
      && /opt/kiln/bin/python -m compileall -q /opt/kiln/lib; \
    fi \
 && rm -rf /tmp/deps
USER kiln
COPY --chown=kiln:kiln artifact/ /models/current/
