# syntax=docker/dockerfile:1
# One image for the API (`ctphase serve`), the Celery workers (train on GPU, predict on CPU) and Flower.
#
#   docker build -t ctphase .                                   # torch from PyPI: CUDA-enabled (GPU worker) and CPU
#   docker build -t ctphase --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .   # smaller, CPU only
#
# torch and torchvision are installed first and pinned as a pair (timm imports torchvision, which must match torch);
# the project install then keeps them (never let pip resolve an unpinned torch).
FROM python:3.11-slim-bookworm

ARG TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tcmalloc: the glibc allocator roughly halves CPU inference throughput of these networks (see bench/).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/ctphase --create-home ctphase \
    && mkdir -p /var/lib/ctphase/models /var/lib/ctphase/previews /var/lib/ctphase/work \
    && chown -R ctphase:ctphase /var/lib/ctphase

WORKDIR /app
# shellcheck disable=SC2086
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} $TORCH_SPEC

COPY pyproject.toml README.md ./
COPY backend backend
COPY worker worker
COPY plugin plugin
COPY migrations migrations
COPY deploy deploy
# Editable install: Alembic finds migrations/ next to the package (backend/alembic.ini).
RUN pip install -e . "flower>=2.0,<3" $TORCH_SPEC ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
    && python -c "import backend.cli, worker, plugin.cli"

ENV LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
    CTPHASE_MODEL_STORE=/var/lib/ctphase/models \
    CTPHASE_PREVIEW_DIR=/var/lib/ctphase/previews

USER ctphase
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=4).status != 200)"
CMD ["sh", "deploy/prestart.sh", "ctphase", "serve", "--host", "0.0.0.0", "--port", "9090", "--no-migrate"]
