/*
 * rewarm-cuda-checkpoint: the `cuda-checkpoint` that CRIU's CUDA plugin runs, as a client of rewarm's
 * resident CUDA helper (runtime/gpu/helper.py), which has the driver loaded and initialised once.
 * Starting Python and calling cuInit for every one of the plugin's calls costs seconds per restore;
 * this costs a fork, an exec and a round trip on a unix socket.
 *
 * It sends its arguments and the REWARM_CUDA_* environment to the helper, then prints the helper's
 * answer and exits with its code. When no helper answers, it runs the Python command itself
 * (`cuda-checkpoint-direct` beside it), so a restore never depends on the helper being up.
 *
 * Build: cc -O2 -Wall -o rewarm-cuda-checkpoint rewarm-cuda-checkpoint.c  (packaging/install-node.sh)
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define SOCKET_PATH "/run/rewarm/cuda-helper.sock"
#define FALLBACK "cuda-checkpoint-direct"

static const char *forwarded[] = { "REWARM_CUDA_DEVICE_MAP", "REWARM_CUDA_LOCK_TIMEOUT_MS", "REWARM_CUDA_TIMING_LOG" };

static void run_direct(char **argv)
{
	char self[PATH_MAX], path[PATH_MAX];
	ssize_t n;

	/* CRIU's plugin runs a bare `cuda-checkpoint` found on PATH: the fallback is found the same way
	 * (rewarm puts both first on CRIU's PATH). A path in argv[0] means the fallback is beside it. */
	if (!strchr(argv[0], '/')) {
		argv[0] = FALLBACK;
		execvp(FALLBACK, argv);
	} else {
		snprintf(path, sizeof(path), "%s/%s", dirname(strdup(argv[0])), FALLBACK);
		argv[0] = path;
		execv(path, argv);
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);   /* last: beside this binary */
	if (n > 0) {
		self[n] = '\0';
		snprintf(path, sizeof(path), "%s/%s", dirname(self), FALLBACK);
		argv[0] = path;
		execv(path, argv);
	}
	fprintf(stderr, "cuda-checkpoint: no CUDA helper, and %s cannot run: %s\n", FALLBACK, strerror(errno));
	exit(1);
}

static int send_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static int send_field(int fd, const char *field)
{
	return send_all(fd, field, strlen(field) + 1);   /* with its NUL */
}

int main(int argc, char **argv)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	char *answer = NULL, *nl, *sep;
	size_t size = 0, cap = 0;
	int fd, i, code;

	strncpy(addr.sun_path, SOCKET_PATH, sizeof(addr.sun_path) - 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0)
		run_direct(argv);

	for (i = 1; i < argc; i++)
		if (send_field(fd, argv[i]))
			goto broken;
	if (send_field(fd, ""))
		goto broken;
	for (i = 0; i < (int)(sizeof(forwarded) / sizeof(forwarded[0])); i++) {
		const char *value = getenv(forwarded[i]);
		char field[PATH_MAX + 64];
		if (!value)
			continue;
		snprintf(field, sizeof(field), "%s=%s", forwarded[i], value);
		if (send_field(fd, field))
			goto broken;
	}
	shutdown(fd, SHUT_WR);

	for (;;) {
		ssize_t n;
		if (size + 4096 > cap) {
			cap = cap ? cap * 2 : 8192;
			answer = realloc(answer, cap + 1);
			if (!answer)
				goto broken;
		}
		n = read(fd, answer + size, cap - size);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto broken;
		if (n == 0)
			break;
		size += (size_t)n;
	}
	answer[size] = '\0';
	nl = memchr(answer, '\n', size);
	if (!nl)
		goto broken;
	code = atoi(answer);
	sep = memchr(nl + 1, '\0', size - (size_t)(nl + 1 - answer));
	if (!sep)
		goto broken;
	fwrite(nl + 1, 1, (size_t)(sep - nl - 1), stdout);
	fwrite(sep + 1, 1, size - (size_t)(sep + 1 - answer), stderr);
	return code;

broken:
	fprintf(stderr, "cuda-checkpoint: the CUDA helper at %s broke off\n", SOCKET_PATH);
	return 1;
}
