# Image for the benchmark path: CUDA, the official AlgoPerf code at a pinned
# commit, and this project's submissions on top.
#
#   docker build --build-arg framework=pytorch -t sfperf:pytorch .
#   docker build --build-arg framework=pytorch \
#     --build-arg algoperf_ref=v0.5 -t sfperf:pytorch-v05 .
#
# framework: pytorch | jax (AlgoPerf's own image accepts only one of the two).
# algoperf_ref: v0.6 (algorithmic-efficiency main at 2c90454f, the current
# rules) or v0.5 (4b01ee64, the commit of the 2024 scoring runs).
# This image cannot be built on the CPU development machines (no Docker
# engine there); tests check this file statically.

FROM nvidia/cuda:12.9.0-cudnn-devel-ubuntu22.04

ARG framework=pytorch
ARG algoperf_ref=v0.6
ARG algoperf_repo=https://github.com/mlcommons/algorithmic-efficiency.git

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
# build-essential: gcc and g++ build the optimizers' CPU kernels on first
# use (sfperf/optim/native_build.py); GPU runs never need them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
      git ffmpeg pigz unzip curl ca-certificates build-essential \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
      python3.11-dev \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Pinned AlgoPerf; never forked or patched.
RUN case "$algoperf_ref" in \
      v0.6) commit=2c90454fc05d5bdf3598b0c7651e611f132a7060 ;; \
      v0.5) commit=4b01ee64c30dec442dd111abe31d40d80820fc70 ;; \
      *) echo "algoperf_ref must be v0.5 or v0.6, got $algoperf_ref"; exit 1 ;; \
    esac \
 && git clone "$algoperf_repo" /algorithmic-efficiency \
 && git -C /algorithmic-efficiency checkout "$commit"

RUN case "$framework" in \
      pytorch) extras='pytorch_gpu,jax_cpu,full' ;; \
      jax) extras='jax_gpu,pytorch_cpu,full' ;; \
      *) echo "framework must be pytorch or jax, got $framework"; exit 1 ;; \
    esac \
 && pip install -e "/algorithmic-efficiency[$extras]"

# This project without its own torch/jax pins: the framework versions are
# AlgoPerf's, as the benchmark requires.
COPY . /sfperf
RUN pip install --no-deps -e /sfperf \
 && pip install absl-py matplotlib scikit-learn

WORKDIR /sfperf
ENV SFPERF_FRAMEWORK=$framework SFPERF_ALGOPERF_REF=$algoperf_ref
ENTRYPOINT ["/opt/venv/bin/sfperf"]
CMD ["--help"]
