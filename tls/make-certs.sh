#!/usr/bin/env bash
# make-certs.sh — create the chromecard chain CA and the k_server / k_proxy certificates.
#
# Output (default: tls/phase2 next to this script):
#   ca.crt ca.key                 the chain CA (the only trust root either side accepts)
#   k_server.crt k_server.key     k_server's TLS server certificate  (EKU serverAuth)
#   k_proxy.crt  k_proxy.key      k_proxy's server AND client certificate (EKU serverAuth, clientAuth)
#
# Keys are ECDSA P-256, PKCS#8 PEM, mode 0600, in a directory made 0700 (an existing one keeps
# its mode, and is refused if other users can write to it).
# Re-running without --force leaves an existing complete set untouched (exit 0).
set -euo pipefail

readonly PROG="${0##*/}"
SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
readonly SCRIPT_DIR
readonly DEFAULT_OUT="${SCRIPT_DIR}/phase2"
readonly FILES=(ca.crt ca.key k_server.crt k_server.key k_proxy.crt k_proxy.key)
readonly CA_DAYS=3650
readonly LEAF_DAYS=825

usage() {
    cat <<USAGE
Usage: ${PROG} [--out DIR] [--force] [--san NAME]...

Create the chromecard chain CA and the k_server and k_proxy certificates.

Options:
  --out DIR    where to write the files (default: ${DEFAULT_OUT})
  --force      replace an existing set (a NEW CA: restart both services afterwards)
  --san NAME   extra subjectAltName for both leaf certificates; a DNS name
               (e.g. a qube name such as my-proxy-vm) or an IPv4/IPv6 address.
               May be repeated.
  -h, --help   show this help

Files written: ${FILES[*]}
Keys are ECDSA P-256 (PKCS#8 PEM), mode 0600; a missing --out directory is made 0700, an
existing one keeps its mode and is refused if other users can write to it.
If DIR already holds the complete set and --force is not given, nothing is changed.
USAGE
}

die() {
    # die EXIT_CODE MESSAGE...
    local code="$1"
    shift
    printf '%s: error: %s\n' "${PROG}" "$*" >&2
    exit "${code}"
}

is_ipv4() {
    local ip="$1" part
    [[ "${ip}" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || return 1
    local IFS=.
    for part in ${ip}; do
        ((10#${part} <= 255)) || return 1
    done
}

is_ipv6() {
    # Permissive shape check; openssl does the real parsing and fails on nonsense.
    [[ "$1" =~ ^[0-9A-Fa-f:.]+$ && "$1" == *:*:* && ${#1} -le 45 ]]
}

is_dns_name() {
    # Letters, digits, '-', '_' (Qubes names use '_'), dot-separated labels, no wildcards.
    local name="$1"
    ((${#name} <= 253)) || return 1
    [[ "${name}" =~ ^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$ ]]
}

out_dir="${DEFAULT_OUT}"
force=0
extra_sans=()

while (($# > 0)); do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --force)
            force=1
            shift
            ;;
        --out | --san)
            if (($# < 2)) || [[ -z "$2" ]]; then
                if [[ "$1" == --out ]]; then
                    die 2 "--out needs a directory, e.g. '--out /home/user/chromecard/tls/phase2' (see --help)"
                fi
                die 2 "--san needs a name or address, e.g. '--san my-proxy-qube' or '--san 10.137.0.5' (see --help)"
            fi
            if [[ "$1" == --out ]]; then out_dir="$2"; else extra_sans+=("$2"); fi
            shift 2
            ;;
        --out=*)
            out_dir="${1#--out=}"
            [[ -n "${out_dir}" ]] || die 2 "--out needs a directory (see --help)"
            shift
            ;;
        --san=*)
            extra_sans+=("${1#--san=}")
            shift
            ;;
        *)
            die 2 "unknown argument '$1'; valid options are --out DIR, --force, --san NAME, --help"
            ;;
    esac
done

command -v openssl >/dev/null 2>&1 || die 1 "openssl not found in PATH; install it (e.g. 'sudo dnf install openssl' or 'sudo apt-get install openssl')"

# Build the subjectAltName entries shared by both leaves: defaults, then each --san, de-duplicated.
san_dns=()
san_ip=(127.0.0.1)
for name in "${extra_sans[@]+"${extra_sans[@]}"}"; do
    if is_ipv4 "${name}" || is_ipv6 "${name}"; then
        [[ " ${san_ip[*]} " == *" ${name} "* ]] || san_ip+=("${name}")
    elif [[ "${name}" =~ ^[0-9.]+$ ]]; then
        die 2 "--san '${name}' looks like an IPv4 address but is not a valid one"
    elif is_dns_name "${name}"; then
        [[ "${name}" == localhost || " ${san_dns[*]-} " == *" ${name} "* ]] || san_dns+=("${name}")
    else
        die 2 "--san '${name}' is neither a DNS name (letters, digits, '-', '_', '.') nor an IP address"
    fi
done

# ---- existing output --------------------------------------------------------
present=()
missing=()
for f in "${FILES[@]}"; do
    if [[ -e "${out_dir}/${f}" ]]; then present+=("${f}"); else missing+=("${f}"); fi
done

if ((force == 0)); then
    if ((${#missing[@]} == 0)); then
        echo "${PROG}: certificates already exist in ${out_dir}; leaving them untouched (use --force to replace them)."
        if ((${#extra_sans[@]} > 0)); then
            echo "${PROG}: note: --san takes effect only when certificates are made; add --force to re-create them (this makes a new CA)." >&2
        fi
        for f in ca.key k_server.key k_proxy.key; do
            mode="$(stat -c '%a' -- "${out_dir}/${f}" 2>/dev/null || echo '?')"
            if [[ "${mode}" != 600 && "${mode}" != 400 ]]; then
                echo "${PROG}: warning: ${out_dir}/${f} has mode ${mode}; run: chmod 600 '${out_dir}/${f}'" >&2
            fi
        done
        exit 0
    fi
    if ((${#present[@]} > 0)); then
        die 1 "${out_dir} holds a partial set (present: ${present[*]}; missing: ${missing[*]}); re-run with --force to replace all of them with a new CA"
    fi
fi

# ---- generate ---------------------------------------------------------------
umask 077
if [[ -d "${out_dir}" ]]; then
    # Checked where it really is (a symlink resolved first), since that is where the
    # files go. A directory that was there keeps its mode (it may be shared: --out . or
    # ~); the keys are 0600 whatever it is. One that others can write to, or that belongs
    # to another user, is refused: they could swap the files, the CA key included.
    out_dir="$(cd -- "${out_dir}" && pwd -P)"
    if [[ -n "$(find "${out_dir}" -maxdepth 0 -perm /022)" ]]; then
        die 2 "${out_dir} is writable by other users; give --out a directory of your own (it is made 0700 when missing)"
    fi
    owner="$(stat -c '%u' -- "${out_dir}")"
    if [[ "${owner}" != "$(id -u)" && "${owner}" != 0 ]]; then
        die 2 "${out_dir} belongs to another user ($(stat -c '%U' -- "${out_dir}")), who could replace the keys; give --out a directory of your own (it is made 0700 when missing)"
    fi
else
    mkdir -p -m 700 -- "${out_dir}"
    out_dir="$(cd -- "${out_dir}" && pwd -P)"
fi

# Everything is made in a staging directory inside out_dir and moved into place only
# after it verified, so a failure never leaves a half-written set behind.
stage="$(mktemp -d "${out_dir}/.make-certs.XXXXXX")"
cleanup() { rm -rf -- "${stage}"; }
trap cleanup EXIT

random_serial() {
    # 128 random bits with the top bit cleared: a positive serial, as RFC 5280 asks.
    local hex
    hex="$(openssl rand -hex 16)"
    printf '0x%x%s' "$((16#${hex:0:1} & 7))" "${hex:1}"
}

genkey() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null \
        || die 1 "openssl could not generate the key $1"
    chmod 600 -- "$1"
}

# Minimal request config, so the system openssl.cnf adds nothing we did not ask for.
cat >"${stage}/req.cnf" <<'CNF'
[req]
distinguished_name = req_dn
prompt = no
[req_dn]
CN = unused
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CNF

write_leaf_ext() {
    # write_leaf_ext FILE CN EKU
    local file="$1" cn="$2" eku="$3" i=1 n
    {
        echo "[v3_leaf]"
        echo "basicConstraints = critical, CA:FALSE"
        echo "keyUsage = critical, digitalSignature"
        echo "extendedKeyUsage = ${eku}"
        echo "subjectKeyIdentifier = hash"
        echo "authorityKeyIdentifier = keyid:always"
        echo "subjectAltName = @alt_names"
        echo "[alt_names]"
        for n in "${cn}" localhost "${san_dns[@]+"${san_dns[@]}"}"; do
            echo "DNS.${i} = ${n}"
            i=$((i + 1))
        done
        i=1
        for n in "${san_ip[@]}"; do
            echo "IP.${i} = ${n}"
            i=$((i + 1))
        done
    } >"${file}"
}

echo "${PROG}: creating the chain CA and certificates in ${out_dir}"

genkey "${stage}/ca.key"
openssl req -new -x509 -config "${stage}/req.cnf" -extensions v3_ca \
    -key "${stage}/ca.key" -subj "/CN=chromecard chain CA" \
    -sha256 -days "${CA_DAYS}" -set_serial "$(random_serial)" \
    -out "${stage}/ca.crt" \
    || die 1 "openssl could not create the CA certificate"

make_leaf() {
    # make_leaf NAME EKU
    local name="$1" eku="$2"
    genkey "${stage}/${name}.key"
    openssl req -new -config "${stage}/req.cnf" -key "${stage}/${name}.key" \
        -subj "/CN=${name}" -out "${stage}/${name}.csr" \
        || die 1 "openssl could not create the request for ${name}"
    write_leaf_ext "${stage}/${name}.ext" "${name}" "${eku}"
    openssl x509 -req -in "${stage}/${name}.csr" \
        -CA "${stage}/ca.crt" -CAkey "${stage}/ca.key" -set_serial "$(random_serial)" \
        -sha256 -days "${LEAF_DAYS}" -extfile "${stage}/${name}.ext" -extensions v3_leaf \
        -out "${stage}/${name}.crt" 2>/dev/null \
        || die 1 "openssl could not sign the certificate for ${name}"
}

# serverAuth only: k_server is never a TLS client, so its certificate must not be usable as one.
make_leaf k_server serverAuth
# serverAuth: k_proxy's listener toward clients; clientAuth: its identity toward k_server (mutual TLS).
make_leaf k_proxy serverAuth,clientAuth

# ---- verify before installing -------------------------------------------------
verify() {
    # verify CERT PURPOSE
    openssl verify -x509_strict -CAfile "${stage}/ca.crt" -purpose "$2" "${stage}/$1" >/dev/null \
        || die 1 "verification of $1 for purpose $2 failed; nothing was installed"
}
verify k_server.crt sslserver
verify k_proxy.crt sslserver
verify k_proxy.crt sslclient
# The split of EKUs is the point: k_server.crt must NOT pass as a client certificate.
if openssl verify -CAfile "${stage}/ca.crt" -purpose sslclient "${stage}/k_server.crt" >/dev/null 2>&1; then
    die 1 "k_server.crt unexpectedly verifies as a client certificate; nothing was installed"
fi

for f in "${FILES[@]}"; do
    case "${f}" in
        *.crt) chmod 644 -- "${stage}/${f}" ;;
        *.key) chmod 600 -- "${stage}/${f}" ;;
    esac
    mv -f -- "${stage}/${f}" "${out_dir}/${f}"
done

# Final check on the installed files, as the runbook asks.
openssl verify -CAfile "${out_dir}/ca.crt" "${out_dir}/k_server.crt" "${out_dir}/k_proxy.crt"

# ---- summary (certificates only; key material is never printed) --------------
summary() {
    local crt="$1"
    local subject enddate sans eku
    subject="$(openssl x509 -in "${crt}" -noout -subject -nameopt RFC2253)"
    enddate="$(openssl x509 -in "${crt}" -noout -enddate)"
    sans="$(openssl x509 -in "${crt}" -noout -ext subjectAltName 2>/dev/null | sed -n '2,$p' | tr -d ' ')"
    eku="$(openssl x509 -in "${crt}" -noout -ext extendedKeyUsage 2>/dev/null | sed -n '2,$p' | sed 's/^ *//')"
    printf '  %s\n    %s\n' "${crt}" "${subject}"
    if [[ -n "${sans}" ]]; then printf '    SAN: %s\n' "${sans}"; fi
    if [[ -n "${eku}" ]]; then printf '    EKU: %s\n' "${eku}"; fi
    printf '    expires: %s\n' "${enddate#notAfter=}"
}

echo
echo "${PROG}: done. Certificates:"
summary "${out_dir}/ca.crt"
printf '    %s\n' "$(openssl x509 -in "${out_dir}/ca.crt" -noout -fingerprint -sha256)"
summary "${out_dir}/k_server.crt"
summary "${out_dir}/k_proxy.crt"
echo "  keys (mode 0600): ${out_dir}/ca.key ${out_dir}/k_server.key ${out_dir}/k_proxy.key"
echo "  keep ca.key offline if you can: whoever holds it can mint a k_proxy client certificate."
