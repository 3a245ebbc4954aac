/*
 * A stand-in for the CUDA driver's checkpoint API (libcuda.so.1), for machines without a GPU: the
 * tests put it first on LD_LIBRARY_PATH of rewarm's cuda-checkpoint, which then answers CRIU's
 * real CUDA plugin about real processes. Named a stand-in: it is the seam rewarm's own code
 * reaches the driver through, and CI has no driver.
 *
 * A process "uses CUDA" when its environment holds STAND_IN_CUDA=1 (read from /proc/PID/environ,
 * which CRIU restores with the process); its restore thread is its last thread. Every other
 * process answers CUDA_ERROR_NOT_INITIALIZED, as the driver answers for a process without CUDA
 * state. The state of each process (its thread group) lives in $STAND_IN_CUDA_DIR/PID, and every call that reaches a
 * process is appended to $STAND_IN_CUDA_DIR/calls ("lock 123").
 *
 * Build: cc -shared -fPIC -o libcuda.so.1 libcuda.c   (the tests do)
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SUCCESS = 0, INVALID_VALUE = 1, NOT_INITIALIZED = 3, ILLEGAL_STATE = 401 };
enum { RUNNING = 0, LOCKED = 1, CHECKPOINTED = 2 };

static int uses_cuda(int pid)
{
	char path[64], buf[65536];
	size_t n, i;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/environ", pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	for (i = 0; i < n; i += strlen(buf + i) + 1)
		if (strcmp(buf + i, "STAND_IN_CUDA=1") == 0)
			return 1;
	return 0;
}

static int tgid(int pid)   /* the plugin asks the state of the restore thread: its process's */
{
	char path[64], line[256];
	int found = pid;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	f = fopen(path, "r");
	if (!f)
		return pid;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Tgid: %d", &found) == 1)
			break;
	fclose(f);
	return found;
}

static void state_path(int pid, char *path, size_t size)
{
	const char *dir = getenv("STAND_IN_CUDA_DIR");
	snprintf(path, size, "%s/%d", dir ? dir : "/tmp", tgid(pid));
}

static int get_state(int pid)
{
	char path[4096];
	int state = RUNNING;
	FILE *f;

	state_path(pid, path, sizeof(path));
	f = fopen(path, "r");
	if (f) {
		if (fscanf(f, "%d", &state) != 1)
			state = RUNNING;
		fclose(f);
	}
	return state;
}

static void record(const char *call, int pid, int state)
{
	char path[4096];
	const char *dir = getenv("STAND_IN_CUDA_DIR");
	FILE *f;

	state_path(pid, path, sizeof(path));
	f = fopen(path, "w");
	if (f) {
		fprintf(f, "%d\n", state);
		fclose(f);
	}
	snprintf(path, sizeof(path), "%s/calls", dir ? dir : "/tmp");
	f = fopen(path, "a");
	if (f) {
		fprintf(f, "%s %d\n", call, pid);
		fclose(f);
	}
}

static int step(const char *call, int pid, int from, int to)
{
	if (!uses_cuda(pid))
		return NOT_INITIALIZED;
	if (get_state(pid) != from)
		return ILLEGAL_STATE;
	record(call, pid, to);
	return SUCCESS;
}

int cuInit(unsigned int flags) { (void)flags; return SUCCESS; }

int cuGetErrorName(int code, const char **name)
{
	*name = code == SUCCESS ? "CUDA_SUCCESS" : code == NOT_INITIALIZED ? "CUDA_ERROR_NOT_INITIALIZED"
		: code == ILLEGAL_STATE ? "CUDA_ERROR_ILLEGAL_STATE" : "CUDA_ERROR_INVALID_VALUE";
	return SUCCESS;
}

int cuCheckpointProcessGetState(int pid, int *state)
{
	if (!uses_cuda(pid))
		return NOT_INITIALIZED;
	*state = get_state(pid);
	return SUCCESS;
}

int cuCheckpointProcessGetRestoreThreadId(int pid, int *tid)
{
	char path[64];
	struct dirent *d;
	DIR *dir;
	int last = 0;

	if (!uses_cuda(pid))
		return NOT_INITIALIZED;
	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	dir = opendir(path);
	if (!dir)
		return INVALID_VALUE;
	while ((d = readdir(dir)))
		if (atoi(d->d_name) > last)
			last = atoi(d->d_name);
	closedir(dir);
	*tid = last;
	return SUCCESS;
}

int cuCheckpointProcessLock(int pid, void *args) { (void)args; return step("lock", pid, RUNNING, LOCKED); }
int cuCheckpointProcessCheckpoint(int pid, void *args) { (void)args; return step("checkpoint", pid, LOCKED, CHECKPOINTED); }
int cuCheckpointProcessRestore(int pid, void *args) { (void)args; return step("restore", pid, CHECKPOINTED, LOCKED); }
int cuCheckpointProcessUnlock(int pid, void *args) { (void)args; return step("unlock", pid, LOCKED, RUNNING); }
