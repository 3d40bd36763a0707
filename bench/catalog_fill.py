#!/usr/bin/env python3
"""bench/catalog_fill.py: make a job of N backups on an S3 server quickly, for bench/catalog.sh.

    catalog_fill.py ENDPOINT BUCKET JOB COUNT [STEP_HOURS]

Takes the oldest backup of JOB in BUCKET (one real `drkit backup`) and writes COUNT copies of
it, each in its own folder with a new id and start time (STEP_HOURS apart, default 6, going
back from the oldest one): the archive copied server-side, the manifest rewritten with the
new id, job, data key and times. Every copy is a valid backup for `drkit list` (no signing).
Uses the AWS credentials of the environment (any value for moto).
"""
import concurrent.futures as cf
import datetime as dt
import json
import random
import sys

import boto3
from botocore.config import Config


def main():
    endpoint, bucket, job, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    step = dt.timedelta(hours=float(sys.argv[5]) if len(sys.argv) > 5 else 6)
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(max_pool_connections=32, retries={"max_attempts": 8}),
    )
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=job + "/"):
        keys += [o["Key"] for o in page.get("Contents", [])]
    manifests = sorted(k for k in keys if k.endswith("/manifest.json"))
    if not manifests:
        sys.exit(f"no backup of {job} in {bucket}")
    base = json.loads(s3.get_object(Bucket=bucket, Key=manifests[0])["Body"].read())
    t0 = dt.datetime.strptime(base["id"][:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    took = dt.datetime.fromisoformat(base["finished_at"].replace("Z", "+00:00")) - \
        dt.datetime.fromisoformat(base["started_at"].replace("Z", "+00:00"))
    name = base["data"]["key"].rsplit("/", 1)[1]
    rng = random.Random(15)

    def one(i):
        start = t0 - step * (i + 1)
        new_id = f"{start:%Y%m%dT%H%M%SZ}-{rng.getrandbits(24):06x}"
        m = dict(base)
        m["id"] = new_id
        m["job"] = job
        m["started_at"] = start.isoformat().replace("+00:00", "Z")
        m["finished_at"] = (start + took).isoformat().replace("+00:00", "Z")
        m["data"] = dict(base["data"], key=f"{job}/{new_id}/{name}")
        s3.copy_object(Bucket=bucket, Key=m["data"]["key"],
                       CopySource={"Bucket": bucket, "Key": base["data"]["key"]})
        s3.put_object(Bucket=bucket, Key=f"{job}/{new_id}/manifest.json",
                      Body=(json.dumps(m, indent=2) + "\n").encode())

    with cf.ThreadPoolExecutor(16) as ex:
        for _ in ex.map(one, range(count)):
            pass


if __name__ == "__main__":
    main()
