# pageferry service: gunicorn + the engine, data under the /data volume.
#   docker build -t pageferry .
#   docker run -p 8000:8000 -v pageferry-data:/data -e API_TOKEN="$(openssl rand -hex 32)" pageferry
# API_TOKEN must be given: the image binds 0.0.0.0:8000 (BIND), and the service refuses to start
# on a non-loopback address without a token (ALLOW_NO_TOKEN=1 overrides, on purpose only).
# Clients send `Authorization: Bearer <API_TOKEN>`. See docs/security.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    PORT=8000 \
    BIND=0.0.0.0:8000

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY config/ config/
COPY engine/ engine/
COPY service/ service/
COPY gunicorn.conf.py .
# PYTHONDONTWRITEBYTECODE stops runtime writes; compile once here so every start is fast.
RUN python -m compileall -q config engine service

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin pageferry \
    && mkdir -p /data && chown pageferry /data
USER pageferry
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]

ENTRYPOINT ["gunicorn", "-c", "gunicorn.conf.py"]
