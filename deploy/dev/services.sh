#!/usr/bin/env bash
# Throwaway real servers for tests and benches: Redis, PostgreSQL, RabbitMQ and S3 (SeaweedFS) on loopback,
# each with its own data directory under $WABRIDGE_SERVICES_DIR (default /tmp/wabridge-services).
#
#   services.sh install   apt packages (redis-server, rabbitmq-server, postgresql, kubernetes-client, prometheus) if missing
#   services.sh start     start all four (idempotent: a running server is left alone) and wait until ready
#   services.sh stop      stop all four (idempotent)
#   services.sh env       print the WABRIDGE_* variables that point at them
#
# Facts behind the commands are in ../shared/docs/infra.md (tested on Debian 12, 2 cores).
set -euo pipefail

DIR=${WABRIDGE_SERVICES_DIR:-/tmp/wabridge-services}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# Below the kernel's ephemeral range (32768–60999): an outgoing connection can be given any port in that range as
# its own, and one holding 55672 once kept RabbitMQ from binding it (could_not_start_listener).
REDIS_PORT=${WABRIDGE_TEST_REDIS_PORT:-26379}
PG_PORT=${WABRIDGE_TEST_PG_PORT:-25432}
AMQP_PORT=${WABRIDGE_TEST_AMQP_PORT:-25672}
AMQP_DIST_PORT=${WABRIDGE_TEST_AMQP_DIST_PORT:-25673}
EPMD_PORT=${WABRIDGE_TEST_EPMD_PORT:-24369}
S3_PORT=${WABRIDGE_TEST_S3_PORT:-28333}
S3_KEY=wabridge-test
S3_SECRET=wabridge-test-secret
WEED=${WEED:-$ROOT/.venv/bin/weed}

log() { printf 'services: %s\n' "$*" >&2; }

pg_bin() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return; }
    done
    return 1
}

rabbit_sbin() {
    local d
    for d in /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin; do
        [ -x "$d/rabbitmq-server" ] && { echo "$d"; return; }
    done
    return 1
}

install() {
    local need=() tools=()
    command -v redis-server >/dev/null || need+=(redis-server)
    rabbit_sbin >/dev/null || need+=(rabbitmq-server)
    pg_bin >/dev/null || need+=(postgresql)
    # The deploy tests (tests/deploy): kubectl renders deploy/k8s, promtool checks the alert rules. Any kubectl will do
    # (a cloud SDK's own kubectl owns the same path, so Debian's is installed only when there is none).
    command -v kubectl >/dev/null || tools+=(kubernetes-client)
    command -v promtool >/dev/null || tools+=(prometheus)
    if [ $((${#need[@]} + ${#tools[@]})) -gt 0 ]; then
        log "installing ${need[*]} ${tools[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo=sudo
        $sudo apt-get update -qq
        [ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
        if [ ${#tools[@]} -gt 0 ]; then
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${tools[@]}" >/dev/null
            # Only promtool is wanted: on a systemd machine the package also starts a Prometheus server.
            if [[ " ${tools[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null; then
                $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
            fi
        fi
    fi
}

wait_for() { # wait_for SECONDS NAME COMMAND...
    local deadline=$((SECONDS + $1)) name=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then log "$name did not become ready"; return 1; fi
        sleep 0.2
    done
}

# --- Redis -------------------------------------------------------------------------------------------------------
start_redis() {
    if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then return; fi
    mkdir -p "$DIR/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
        --dir "$DIR/redis" --pidfile "$DIR/redis/redis.pid" --logfile "$DIR/redis/redis.log"
    wait_for 20 redis redis-cli -p "$REDIS_PORT" ping
}
stop_redis() { redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true; }

# --- PostgreSQL ----------------------------------------------------------------------------------------------------
start_pg() {
    local bin; bin=$(pg_bin)
    if "$bin/pg_isready" -h 127.0.0.1 -p "$PG_PORT" >/dev/null 2>&1; then return; fi
    mkdir -p "$DIR/pg"
    chmod 755 "$DIR" "$DIR/pg"
    chown postgres "$DIR/pg"
    if [ ! -s "$DIR/pg/data/PG_VERSION" ]; then
        rm -rf "$DIR/pg/data"
        runuser -u postgres -- "$bin/initdb" -D "$DIR/pg/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 -N >/dev/null
    fi
    rm -f "$DIR/pg/data/postmaster.pid"
    runuser -u postgres -- "$bin/pg_ctl" -D "$DIR/pg/data" -l "$DIR/pg/pg.log" -w -t 30 \
        -o "-p $PG_PORT -k $DIR/pg -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=300" \
        start >/dev/null
    wait_for 30 postgresql "$bin/pg_isready" -h 127.0.0.1 -p "$PG_PORT"
}
stop_pg() {
    local bin; bin=$(pg_bin) || return 0
    [ -d "$DIR/pg/data" ] || return 0
    runuser -u postgres -- "$bin/pg_ctl" -D "$DIR/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
}

# --- RabbitMQ ------------------------------------------------------------------------------------------------------
rabbit_env() {
    local d="$DIR/rabbitmq"
    export HOME="$d/home" RABBITMQ_NODENAME="wabridge@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$AMQP_PORT" RABBITMQ_DIST_PORT="$AMQP_DIST_PORT" ERL_EPMD_ADDRESS=127.0.0.1 \
        ERL_EPMD_PORT="$EPMD_PORT" RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log" \
        RABBITMQ_PID_FILE="$d/rabbit.pid" RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
        RABBITMQ_CONFIG_FILE="$d/rabbitmq" RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" \
        RABBITMQ_PLUGINS_EXPAND_DIR="$d/plugins-expand" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}
amqp_up() { (exec 3<>"/dev/tcp/127.0.0.1/$AMQP_PORT") 2>/dev/null; }
start_rabbit() {
    if amqp_up; then return; fi
    local d="$DIR/rabbitmq" sbin; sbin=$(rabbit_sbin)
    # A fresh broker each start: quorum queues left by interrupted runs are recovered one by one at boot otherwise.
    rm -rf "$d/mnesia"
    mkdir -p "$d/home" "$d/mnesia" "$d/log" "$d/plugins-expand"
    echo '[rabbitmq_consistent_hash_exchange].' >"$d/enabled_plugins"
    # consumer_timeout (2 h) above WABRIDGE_FAR_END_HOLD (1 h): a message held through a Genesys outage stays unacked
    # that long, and the broker's default (30 min) would close the channel under it.
    printf 'loopback_users = none\nlisteners.tcp.default = 127.0.0.1:%s\nconsumer_timeout = 7200000\n' "$AMQP_PORT" \
        >"$d/rabbitmq.conf"
    : >"$d/rabbitmq-env.conf"
    (
        rabbit_env
        if [ ! -s "$d/epmd.pid" ] || ! kill -0 "$(cat "$d/epmd.pid")" 2>/dev/null; then
            setsid epmd -address 127.0.0.1 -port "$EPMD_PORT" >/dev/null 2>&1 &
            echo $! >"$d/epmd.pid"
            sleep 0.3
        fi
        "$sbin/rabbitmq-server" -detached >"$d/start.log" 2>&1
        "$sbin/rabbitmqctl" wait --timeout 90 "$d/rabbit.pid" >>"$d/start.log" 2>&1 || { tail -20 "$d/start.log" >&2; exit 1; }
    )
    wait_for 30 rabbitmq amqp_up
}
stop_rabbit() {
    local d="$DIR/rabbitmq" sbin
    [ -d "$d" ] || return 0
    sbin=$(rabbit_sbin) || return 0
    (
        rabbit_env
        if amqp_up; then "$sbin/rabbitmqctl" shutdown >/dev/null 2>&1 || true; fi
    )
    if [ -s "$d/rabbit.pid" ]; then kill -9 "$(cat "$d/rabbit.pid")" 2>/dev/null || true; fi
    if [ -s "$d/epmd.pid" ]; then kill "$(cat "$d/epmd.pid")" 2>/dev/null || true; rm -f "$d/epmd.pid"; fi
}

# --- S3 (SeaweedFS) ------------------------------------------------------------------------------------------------
s3_up() { curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" 2>/dev/null; }
# Every bucket is a SeaweedFS collection with volumes of its own, and the tests make a bucket pair per test: with the
# default volume size (1 GiB, the count derived from free disk: 79 here, 4 on a nearly full disk) the suite ran out
# of volumes ("No writable volumes and no free volumes left"). Small volumes and an explicit count fix that.
start_s3() {
    if s3_up; then return; fi
    [ -x "$WEED" ] || { log "no weed binary at $WEED (run 'uv sync' first)"; return 1; }
    local d="$DIR/s3"
    rm -rf "$d/data"  # throwaway: every start begins with no buckets and every volume free
    mkdir -p "$d/data"
    rm -f "$d/s3.sock" "$d/filer.sock"
    AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET setsid "$WEED" mini -dir="$d/data" -ip=127.0.0.1 \
        -ip.bind=127.0.0.1 -s3.port="$S3_PORT" -admin.ui=false -webdav=false -master.telemetry=false \
        -s3.port.iceberg=0 -s3.port.lance=0 -s3.localSocket="$d/s3.sock" -filer.localSocket="$d/filer.sock" \
        -master.volumeSizeLimitMB=16 -volume.max=2000 \
        >"$d/weed.log" 2>&1 &
    echo $! >"$d/weed.pid"
    wait_for 60 s3 s3_up
}
stop_s3() {
    local pidf="$DIR/s3/weed.pid" pid
    [ -s "$pidf" ] || return 0
    pid=$(cat "$pidf")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidf"
}

print_env() {
    cat <<EOF
export WABRIDGE_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
export WABRIDGE_DATABASE_URL=postgresql://postgres@127.0.0.1:$PG_PORT/postgres
export WABRIDGE_AMQP_URL=amqp://guest:guest@127.0.0.1:$AMQP_PORT/
export WABRIDGE_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export WABRIDGE_S3_ACCESS_KEY=$S3_KEY
export WABRIDGE_S3_SECRET_KEY=$S3_SECRET
EOF
}

case "${1:-}" in
    install) install ;;
    start)
        install
        mkdir -p "$DIR"
        start_redis & r=$!
        start_pg & p=$!
        start_s3 & s=$!
        start_rabbit
        wait $r && wait $p && wait $s
        log "all four servers ready (env: $0 env)"
        ;;
    stop)
        stop_rabbit & stop_s3 & stop_redis & stop_pg
        wait
        ;;
    env) print_env ;;
    *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
