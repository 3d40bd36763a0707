#!/usr/bin/env bash
# scripts/compose-env.sh — print the DRKIT_TEST_* variables for the servers of
# docker-compose.test.yml, for `eval "$(bash scripts/compose-env.sh)"` before
# `DRKIT_TEST_EXTERNAL=1 bash scripts/test.sh` (docs/testing.md).
#
# MinIO stands in for both S3 servers of the suite (moto and s3s-fs): the storage suite and
# the object-lock tests run against it twice. pg_dump/pg_restore come from this machine
# (DRKIT_TEST_PG_BINDIR, default /usr/lib/postgresql/15/bin): they must be 15 or newer.
set -euo pipefail
pg_port=${DRKIT_PG_PORT:-25432}
mongo_port=${DRKIT_MONGO_PORT:-27117}
minio_port=${DRKIT_MINIO_PORT:-29000}
cat <<ENV
export DRKIT_TEST_PG_URL='postgres://drkit:drkit-test-pw@127.0.0.1:${pg_port}/postgres'
export DRKIT_TEST_PG_BINDIR='${DRKIT_TEST_PG_BINDIR:-/usr/lib/postgresql/15/bin}'
export DRKIT_TEST_MONGO_URL='mongodb://127.0.0.1:${mongo_port}/?directConnection=true'
export DRKIT_TEST_MOTO_ENDPOINT='http://127.0.0.1:${minio_port}'
export DRKIT_TEST_MOTO_ACCESS_KEY='drkit-test'
export DRKIT_TEST_MOTO_SECRET_KEY='drkit-test-secret'
export DRKIT_TEST_S3S_ENDPOINT='http://127.0.0.1:${minio_port}'
export DRKIT_TEST_S3S_ACCESS_KEY='drkit-test'
export DRKIT_TEST_S3S_SECRET_KEY='drkit-test-secret'
ENV
