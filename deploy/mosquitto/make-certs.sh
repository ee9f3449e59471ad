#!/bin/sh
# Certificates for the broker's TLS listener (port 8883): a certificate authority (CA) of the
# site's own and a broker certificate signed by it. Nodes get ca.crt only; ca.key stays offline
# (a USB stick in the office safe): whoever has it can impersonate the broker.
#
#   deploy/mosquitto/make-certs.sh OUT_DIR NAME...
#   deploy/mosquitto/make-certs.sh /etc/mosquitto/certs DNS:gateway.local IP:192.168.1.10
#
# NAME: every name the nodes use for the broker (their mqtt.broker URL), as DNS:<name> or
# IP:<address>. An existing CA in OUT_DIR is reused (nodes keep trusting it); the broker
# certificate is always made new. Validity: CA 20 years, broker 10 years (a rural site has
# nobody to renew certificates every year; revoke by replacing the CA if a key leaks).
set -eu

if [ "$#" -lt 2 ]; then
    echo "usage: $0 OUT_DIR DNS:name|IP:address ..." >&2
    exit 2
fi
out=$1
shift
names=""
for name in "$@"; do
    case "$name" in
        DNS:?*|IP:?*) names="${names:+$names,}$name" ;;
        *) echo "error: $name: write DNS:<name> or IP:<address>" >&2; exit 2 ;;
    esac
done
first=${1#*:}

mkdir -p "$out"
umask 077
if [ ! -f "$out/ca.key" ]; then
    openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days 7300 \
        -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=cacao-dryer site CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>/dev/null
fi
openssl req -newkey rsa:2048 -sha256 -nodes -keyout "$out/broker.key" -out "$out/broker.csr" \
    -subj "/CN=$first" 2>/dev/null
extensions="$out/broker.ext"
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    "$names" > "$extensions"
openssl x509 -req -sha256 -in "$out/broker.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -CAcreateserial -days 3650 -extfile "$extensions" -out "$out/broker.crt" 2>/dev/null
rm -f "$out/broker.csr" "$extensions" "$out/ca.srl"
chmod 644 "$out/ca.crt" "$out/broker.crt"
chmod 600 "$out/ca.key" "$out/broker.key"
echo "$out/ca.crt: copy to every node (mqtt.tls_ca_file)"
echo "$out/broker.crt, $out/broker.key: the broker's (certfile, keyfile); for $names"
echo "$out/ca.key: keep OFFLINE; needed only to make the next broker certificate"
