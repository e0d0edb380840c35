/*
 * LD_PRELOAD shim used by the local pod runner.
 *
 * Every pod the runner starts shares the host's network namespace, so two
 * pods that both listen on 0.0.0.0:8000 (two Triton replicas, say) would fight
 * over the port. Each pod has its own loopback address instead (its pod IP,
 * passed in MODEL_OPERATOR_POD_IP), and this shim turns a wildcard bind into a
 * bind to that address, so pod specs need no change to run here.
 *
 * IPv6 wildcard sockets (Python's http.server and gRPC bind [::] dual-stack)
 * are bound to the IPv4-mapped pod address, which keeps them reachable over
 * IPv4 at the pod IP. A socket the program explicitly made IPv6-only is left
 * alone: there is no IPv6 pod address to give it.
 *
 * Statically linked programs (Go binaries) do not load preloaded libraries;
 * for them the shim does nothing.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

static bind_fn real_bind;
static struct in_addr pod_ip;
static int have_pod_ip;

__attribute__((constructor)) static void init(void) {
    const char *ip = getenv("MODEL_OPERATOR_POD_IP");
    have_pod_ip = ip != NULL && inet_pton(AF_INET, ip, &pod_ip) == 1;
    real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    if (real_bind == NULL)
        init();
    if (!have_pod_ip || addr == NULL)
        return real_bind(fd, addr, len);

    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in in4;
        memcpy(&in4, addr, sizeof in4);
        if (in4.sin_addr.s_addr == htonl(INADDR_ANY)) {
            in4.sin_addr = pod_ip;
            return real_bind(fd, (const struct sockaddr *)&in4, sizeof in4);
        }
    } else if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 in6;
        memcpy(&in6, addr, sizeof in6);
        int v6only = 0;
        socklen_t optlen = sizeof v6only;
        if (IN6_IS_ADDR_UNSPECIFIED(&in6.sin6_addr) &&
            getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &optlen) == 0 && !v6only) {
            memset(&in6.sin6_addr, 0, sizeof in6.sin6_addr);
            in6.sin6_addr.s6_addr[10] = 0xff;
            in6.sin6_addr.s6_addr[11] = 0xff;
            memcpy(&in6.sin6_addr.s6_addr[12], &pod_ip, sizeof pod_ip);
            return real_bind(fd, (const struct sockaddr *)&in6, sizeof in6);
        }
    }
    return real_bind(fd, addr, len);
}
