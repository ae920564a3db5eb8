# r1mega on NVIDIA's PyTorch container (CUDA, NCCL, Transformer Engine and apex included).
# Build:  docker build --build-arg BASE_IMAGE=<NVIDIA PyTorch image, release 25.09 or newer> -t r1mega .
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

WORKDIR /opt/r1mega
COPY setup.py README.md ./
COPY r1mega ./r1mega
COPY tools ./tools
COPY configs ./configs
COPY launch ./launch
# Same install step CI runs, minus the torch pin: the image's own CUDA torch satisfies the range.
RUN python -m pip install --no-cache-dir -e ".[wandb]"

ENV OMP_NUM_THREADS=1 \
    NCCL_IB_DISABLE=0 \
    TORCH_NCCL_ASYNC_ERROR_HANDLING=1
ENTRYPOINT ["r1mega"]
CMD ["--help"]
