#!/bin/sh
# Trims the image's virtualenv ($1) of what the agent never loads: botocore's API models
# for services other than S3 and STS (boto3 ships ~400 of them; plaintap's S3 sink needs
# s3, and sts for web-identity credentials), bytecode caches (the image sets
# PYTHONDONTWRITEBYTECODE; Python compiles on import), and test suites.
set -eu
venv=$1
site=$(echo "$venv"/lib/python3*/site-packages)
data="$site/botocore/data"
if [ -d "$data" ]; then
  for d in "$data"/*/; do
    case "$(basename "$d")" in s3|sts|sso|sso-oidc) ;; *) rm -rf "$d" ;; esac
  done
fi
find "$venv" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$site" -maxdepth 2 -type d \( -name tests -o -name test \) -prune -exec rm -rf {} +
