# sslscale training image: CUDA 13.0 runtime with cuDNN (for DALI's nvidia-dali-cuda130 and the
# cu130 torch wheels), Python 3.12 from Ubuntu 24.04, the pins of pyproject.toml.
#   docker build -t sslscale .
#   launch/docker_run.sh python -m trainer train --config configs/demo_digits_simclr.yaml
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib

# A C compiler and Python.h: Triton (the fused NT-Xent kernel, torch.compile) builds its launcher
# stubs at run time. The base image tag pins the Ubuntu release, whose security updates replace
# exact package versions, hence no apt version pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV" \
    && useradd --create-home --uid 1001 sslscale

# The heavy dependencies in a layer of their own, so that a change to the code does not reinstall
# torch and DALI. Same pins as pyproject.toml's [project].dependencies (tests/launch checks it).
RUN pip install \
    "torch==2.14.1" \
    "torchvision==0.29.1" \
    "numpy==2.4.6" \
    "pillow==13.0.0" \
    "webdataset==1.0.2" \
    "tensorboard==2.21.0" \
    "nvidia-dali-cuda130==2.4.0" \
    "deepspeed==0.19.8" \
    "omegaconf==2.4.0" \
    "tqdm==4.70.1" \
    "matplotlib==3.11.2" \
    "scikit-learn==1.9.1" \
    "safetensors==0.8.0" \
    "timm==1.0.31" \
    "huggingface-hub==2.4.0"

WORKDIR /workspace/sslscale
COPY --chown=sslscale:sslscale . .
RUN pip install . && mkdir -p shards runs && chown 1001:1001 shards runs

# sslscale, created above
USER 1001
CMD ["python", "-m", "trainer", "--help"]
