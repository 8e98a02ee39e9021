#!/bin/sh
# Starts model-proxy unprivileged (uid 10001) whenever the mounted files allow it.
#
# The original image runs as root, and its users mount ./log, zhiva.key and the JSON
# files with whatever owner and mode they have. To stay a drop-in replacement, a
# container started as root first hands /app/log and /app/data to the model-proxy
# user, then drops privileges if that user can read every mounted file; if it cannot
# (e.g. zhiva.key is 0600 root on the host), it stays root and says why.
set -eu

set -- model-proxy serve --config-dir /app --data-dir /app/data --log-dir /app/log "$@"

if [ "$(id -u)" = 0 ]; then
  chown -R model-proxy:model-proxy /app/log /app/data 2>/dev/null || true
  unreadable=""
  for file in /app/zhiva.crt /app/zhiva.key /app/servers.json /app/models.json /app/access.json; do
    if [ -e "$file" ] && ! setpriv --reuid=model-proxy --regid=model-proxy --clear-groups test -r "$file"; then
      unreadable="$unreadable $file"
    fi
  done
  if [ -z "$unreadable" ]; then
    exec setpriv --reuid=model-proxy --regid=model-proxy --clear-groups "$@"
  fi
  echo "model-proxy: running as root: not readable by uid 10001:$unreadable" >&2
fi
exec "$@"
