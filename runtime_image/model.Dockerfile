# A model's image: the generic runtime plus one artifact (its manifest, module, program and protocol).
# Built by kiln.image from a context of this file and artifact/ (the artifact folder); it runs offline.
ARG RUNTIME=kiln/runtime:latest
FROM ${RUNTIME}
COPY --chown=kiln:kiln artifact/ /models/current/
