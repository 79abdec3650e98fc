#!/usr/bin/env bash
# Make a small private CA, a broker (server) certificate and one client certificate per device or SCADA user,
# for mutual TLS between edge-anomaly devices and mosquitto (deploy/mosquitto/mosquitto.conf).
#
#   make-certs.sh OUTDIR [--server-name NAME]... [--server-ip IP]... [--client NAME]... [--days N] [--force]
#
# OUTDIR/ca.crt, ca.key          the CA (keep ca.key offline once the certificates are made)
# OUTDIR/server.crt, server.key  the broker's certificate; SAN = every --server-name/--server-ip + localhost
# OUTDIR/<client>.crt, .key      a client certificate with CN=<client> (use the device_id or "scada")
#
# Re-running keeps an existing CA and existing certificates (so devices need not be re-provisioned) and only
# makes what is missing; --force makes everything anew. Keys are EC P-256, mode 0600.
# This is a test/small-plant CA. Where the plant has a PKI, use certificates from it instead.
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "make-certs.sh: error: $*" >&2; exit 1; }

OUT=""
DAYS=825
FORCE=0
SERVER_NAMES=()
SERVER_IPS=()
CLIENTS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --server-name) [[ $# -ge 2 ]] || die "$1 needs a value"; SERVER_NAMES+=("$2"); shift 2 ;;
        --server-ip) [[ $# -ge 2 ]] || die "$1 needs a value"; SERVER_IPS+=("$2"); shift 2 ;;
        --client) [[ $# -ge 2 ]] || die "$1 needs a value"; CLIENTS+=("$2"); shift 2 ;;
        --days) [[ $# -ge 2 ]] || die "$1 needs a value"; DAYS=$2; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) [[ -z $OUT ]] || die "one OUTDIR only (got '$OUT' and '$1')"; OUT=$1; shift ;;
    esac
done
[[ -n $OUT ]] || { usage >&2; die "OUTDIR is missing"; }
[[ $DAYS =~ ^[0-9]+$ ]] || die "--days wants a whole number of days, got '$DAYS'"
command -v openssl >/dev/null || die "openssl is not installed (apt-get install openssl)"
for name in ${CLIENTS[@]+"${CLIENTS[@]}"}; do
    [[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || die "client name '$name' may only hold letters, digits, '_', '-', '.'"
done

umask 077
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# Sign $1.key's CSR (subject $2) with the CA into $1.crt, using the extensions in file $3.
sign() {
    local base=$1 subject=$2 ext=$3
    openssl req -new -key "$base.key" -subj "$subject" -out "$WORK/req.csr"
    openssl x509 -req -in "$WORK/req.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -CAcreateserial \
        -days "$DAYS" -sha256 -extfile "$ext" -out "$base.crt" 2>/dev/null
    chmod 0644 "$base.crt"
}

make_ca() {
    if [[ -f $OUT/ca.crt && -f $OUT/ca.key && $FORCE -eq 0 ]]; then
        echo "kept $OUT/ca.crt"
        return
    fi
    new_key "$OUT/ca.key"
    openssl req -x509 -new -key "$OUT/ca.key" -subj "/O=edge-anomaly/CN=edge-anomaly test CA" -days "$DAYS" \
        -sha256 -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$OUT/ca.crt"
    chmod 0644 "$OUT/ca.crt"
    FORCE=1 # a new CA invalidates every certificate it did not sign
    echo "made $OUT/ca.crt"
}

make_server() {
    local san="DNS:localhost,IP:127.0.0.1,IP:::1" name ip
    if [[ -f $OUT/server.crt && $FORCE -eq 0 ]]; then
        echo "kept $OUT/server.crt"
        return
    fi
    for name in ${SERVER_NAMES[@]+"${SERVER_NAMES[@]}"}; do san="DNS:$name,$san"; done
    for ip in ${SERVER_IPS[@]+"${SERVER_IPS[@]}"}; do san="$san,IP:$ip"; done
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" "subjectAltName=$san" >"$WORK/server.ext"
    new_key "$OUT/server.key"
    sign "$OUT/server" "/O=edge-anomaly/CN=${SERVER_NAMES[0]:-localhost}" "$WORK/server.ext"
    echo "made $OUT/server.crt ($san)"
}

make_client() {
    local name=$1
    if [[ -f $OUT/$name.crt && $FORCE -eq 0 ]]; then
        echo "kept $OUT/$name.crt"
        return
    fi
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=clientAuth" >"$WORK/client.ext"
    new_key "$OUT/$name.key"
    sign "$OUT/$name" "/O=edge-anomaly/CN=$name" "$WORK/client.ext"
    echo "made $OUT/$name.crt (CN=$name)"
}

make_ca
make_server
for client in ${CLIENTS[@]+"${CLIENTS[@]}"}; do make_client "$client"; done
rm -f "$OUT/ca.srl"
