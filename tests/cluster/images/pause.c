/* The pod sandbox's first process: it holds the pod's namespaces open, reaps the orphans a
 * shared PID namespace re-parents to it, and exits 0 on SIGTERM or SIGINT.
 *
 * The signals stay blocked and are taken with sigwaitinfo, not handlers: as PID 1 the kernel
 * drops signals whose disposition is the default, but it queues blocked ones. */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>

int main(void) {
  sigset_t wanted;
  sigemptyset(&wanted);
  sigaddset(&wanted, SIGCHLD);
  sigaddset(&wanted, SIGTERM);
  sigaddset(&wanted, SIGINT);
  sigprocmask(SIG_BLOCK, &wanted, NULL);
  for (;;) {
    int sig = sigwaitinfo(&wanted, NULL);
    if (sig == SIGTERM || sig == SIGINT) return 0;
    /* One SIGCHLD may stand for several exits. */
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
  }
}
