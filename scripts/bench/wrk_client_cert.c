/* wrk_client_cert.c: LD_PRELOAD shim that makes wrk present a client certificate.
 *
 * wrk has no flag for a TLS client certificate, and k_server requires one (mutual TLS),
 * so the "direct" load (wrk -> k_server) needs this. The shim wraps SSL_CTX_new: after
 * OpenSSL builds wrk's client context, it loads the certificate chain and key named by
 * WRK_CLIENT_CERT and WRK_CLIENT_KEY into it. Nothing else changes: same wrk, same
 * OpenSSL, same event loop as the chain and nginx runs.
 *
 * No OpenSSL headers needed (only gcc): the two functions are looked up at run time in
 * the libssl that wrk itself loaded.
 *
 *   gcc -shared -fPIC -O2 -o wrk_client_cert.so wrk_client_cert.c -ldl
 *   WRK_CLIENT_CERT=k_proxy.crt WRK_CLIENT_KEY=k_proxy.key \
 *     LD_PRELOAD=./wrk_client_cert.so wrk https://127.0.0.1:PORT/...
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;
#define PEM_FILETYPE 1 /* SSL_FILETYPE_PEM */

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method) {
    static SSL_CTX *(*real_new)(const SSL_METHOD *);
    static int (*use_chain)(SSL_CTX *, const char *);
    static int (*use_key)(SSL_CTX *, const char *, int);
    if (!real_new) {
        real_new = (SSL_CTX * (*)(const SSL_METHOD *)) dlsym(RTLD_NEXT, "SSL_CTX_new");
        use_chain = (int (*)(SSL_CTX *, const char *))dlsym(RTLD_DEFAULT, "SSL_CTX_use_certificate_chain_file");
        use_key = (int (*)(SSL_CTX *, const char *, int))dlsym(RTLD_DEFAULT, "SSL_CTX_use_PrivateKey_file");
        if (!real_new || !use_chain || !use_key) {
            fprintf(stderr, "wrk_client_cert: libssl symbols not found\n");
            abort();
        }
    }
    SSL_CTX *ctx = real_new(method);
    const char *cert = getenv("WRK_CLIENT_CERT");
    const char *key = getenv("WRK_CLIENT_KEY");
    if (ctx && cert && key) {
        if (use_chain(ctx, cert) != 1 || use_key(ctx, key, PEM_FILETYPE) != 1) {
            fprintf(stderr, "wrk_client_cert: cannot load %s / %s\n", cert, key);
            abort();
        }
    }
    return ctx;
}
