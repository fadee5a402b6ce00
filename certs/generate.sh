#!/usr/bin/env bash
# Regenerates the development certificates and JWT keys in this folder.
# FOR DEVELOPMENT ONLY: the private keys are committed to the repository.
#
#   ca.crt / ca.key          dev CA (ECDSA P-256) that signs the server cert
#   server.crt / server.key  gateway TLS cert (ECDSA P-256), SAN localhost, 127.0.0.1, ::1
#   client.crt / client.key  client cert (ECDSA P-256, clientAuth) the gateway may present to
#                            wss:// backends that ask for one ([backend_tls] cert/key), and
#                            loadgen to a gateway that asks clients for one ([tls] client_ca)
#   jwt-private.pem          RSA 2048 key the demo client / loadgen sign RS256 tokens with
#   jwt-public.pem           its public half, which the gateway verifies tokens with
#   jwt-es256-private.pem    ECDSA P-256 key for ES256 tokens (tests, benchmarks)
#   jwt-es256-public.pem     its public half
set -euo pipefail
cd "$(dirname "$0")"
days=3650

openssl ecparam -name prime256v1 -genkey -noout -out ca.key.tmp
openssl pkcs8 -topk8 -nocrypt -in ca.key.tmp -out ca.key && rm ca.key.tmp
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=wsgate dev CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt

openssl ecparam -name prime256v1 -genkey -noout -out server.key.tmp
openssl pkcs8 -topk8 -nocrypt -in server.key.tmp -out server.key && rm server.key.tmp
openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
cat > server.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
  -sha256 -extfile server.ext -out server.crt
rm -f server.csr server.ext ca.srl

openssl ecparam -name prime256v1 -genkey -noout -out client.key.tmp
openssl pkcs8 -topk8 -nocrypt -in client.key.tmp -out client.key && rm client.key.tmp
openssl req -new -key client.key -subj "/CN=wsgate dev gateway client" -out client.csr
cat > client.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
EXT
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
  -sha256 -extfile client.ext -out client.crt
rm -f client.csr client.ext ca.srl

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out jwt-private.pem
openssl pkey -in jwt-private.pem -pubout -out jwt-public.pem

openssl ecparam -name prime256v1 -genkey -noout -out jwt-es256.tmp
openssl pkcs8 -topk8 -nocrypt -in jwt-es256.tmp -out jwt-es256-private.pem && rm jwt-es256.tmp
openssl pkey -in jwt-es256-private.pem -pubout -out jwt-es256-public.pem

echo "certs regenerated in $(pwd) (development only)"
