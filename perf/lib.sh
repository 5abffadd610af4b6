# Shared by the perf scripts (sourced): tool installation, nginx configs, process CPU.

# need CMD:PACKAGE ...: installs the Debian packages whose commands are missing.
need() {
  local missing=() pair
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# nginx_conf PATH NAME HTTP_BLOCK: a one-worker nginx config, pid and error log in $TMP/NAME.*
nginx_conf() {
  cat >"$1" <<CONF
worker_processes 1;
daemon off;
pid $TMP/$2.pid;
error_log $TMP/$2.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
$3
}
CONF
}

HZ=$(getconf CLK_TCK)
# ticks PID...: utime+stime of the processes, in clock ticks.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
