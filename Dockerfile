# mpic on the Ray image of the project's Ray version: for KubeRay (deploy/kuberay/) and the cluster
# launcher's docker mode.  `make image` builds both flavours where a Docker daemon exists:
#
#   docker build -t mpic:2.60.0-py311 .
#   docker build --build-arg RAY_IMAGE_TAG=2.60.0-py311-gpu --build-arg TORCH_INDEX_URL= -t mpic:2.60.0-py311-gpu .
#
# The tag scheme of rayproject/ray is {ray version}-py{python}[-gpu]; the -gpu flavour is CUDA-based and
# needs the NVIDIA container runtime.  tests/deploy/test_kuberay.py checks the default tag against the Ray
# version installed in the project.
ARG RAY_IMAGE_TAG=2.60.0-py311
FROM rayproject/ray:${RAY_IMAGE_TAG}

# CPU images take PyTorch's small CPU wheels; pass an empty TORCH_INDEX_URL for the CUDA wheels of PyPI
# (the -gpu flavour), or e.g. https://download.pytorch.org/whl/cu128 to match an older NVIDIA driver.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# Audio I/O, the FluidSynth renderer and the sample libraries `mpic synth` renders with (as `make system-deps`,
# without its browser).
USER root
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        libsndfile1 libfluidsynth3 fluid-soundfont-gm fluid-soundfont-gs csound-soundfont opl3-soundfont \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /home/ray/mpic && chown ray:users /home/ray/mpic

# Back to the image's non-root user (uid 1000, gid 100 "users"), as Ray expects.
USER ray
WORKDIR /home/ray/mpic

RUN pip install --no-cache-dir -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        "torch>=2.9,<2.15" "torchaudio>=2.9"

# Dependencies first (cached while only the code changes), then the project in editable mode: the source
# tree stays the package, so config.yml and serve/config.yaml are found next to it (ml.config.PROJECT_DIR).
COPY --chown=ray:users pyproject.toml README.md ./
RUN mkdir -p ml serve ray_jobs mpic \
    && touch ml/__init__.py serve/__init__.py ray_jobs/__init__.py mpic/__init__.py \
    && pip install --no-cache-dir -q -e . \
    && rm -rf ml serve ray_jobs mpic mpic.egg-info
# Pretrained weights shipped in a PyPI wheel, downloaded only (as `make pretrained`; .cache is not copied).
RUN pip download --no-cache-dir -q --no-deps musicnn==0.1.0 -d .cache/mpic/wheels
COPY --chown=ray:users . .
RUN pip install --no-cache-dir -q --no-deps -e . \
    && python -c "import ml.config, serve.app, ray_jobs.train, mpic.cli; print('mpic installed')"

# The Ray image's entrypoint is kept: KubeRay and the launcher run `ray start …` in it.
