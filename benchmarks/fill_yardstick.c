/*
 * fill-yardstick: how fast can this node fill anonymous memory from a file
 * in the page cache? The upper bound for CRIU's restore memory stage.
 *
 *   fill-yardstick [-t 1,2,4,8,16] [-m 4k,default,thp] [-r REPEAT]
 *                  [-s MIB] [-p PIECE_MIB] [FILE]
 *
 * N threads take PIECE (default 64 MiB) pieces of FILE from a shared counter
 * and pread() them into one anonymous private mapping as large as the file.
 * Page modes: "4k" = MADV_NOHUGEPAGE (4 KiB pages whatever THP mode the
 * system has), "default" = no advice (what stock CRIU gets), "thp" =
 * MADV_HUGEPAGE (huge pages under THP "madvise" and "always"). Timed: mmap,
 * madvise, fill, join (the munmap afterwards is not). Without FILE a
 * temporary file of -s MiB (default 4096) is created in /var/tmp and read
 * once, so the page cache is warm. Prints one line per run and the best of
 * REPEAT (default 3) per configuration:
 *
 *   threads=4 mode=thp bytes=4294967296 best_s=0.412 GB/s=10.42
 *
 * Build: cc -O2 -pthread -o fill-yardstick fill-yardstick.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MiB (1UL << 20)
#define HPAGE (2UL * MiB)

static int fd;
static size_t fsize, piece = 64 * MiB;
static unsigned char *mem;
static unsigned long next_piece, nr_pieces;
static int failed;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *reader(void *arg)
{
	(void)arg;
	for (;;) {
		unsigned long idx = __atomic_fetch_add(&next_piece, 1, __ATOMIC_RELAXED);
		size_t off, len, done = 0;

		if (idx >= nr_pieces)
			break;
		off = idx * piece;
		len = fsize - off < piece ? fsize - off : piece;
		while (done < len) {
			ssize_t r = pread(fd, mem + off + done, len - done, off + done);

			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				fprintf(stderr, "pread at %zu: %s\n", off + done, r ? strerror(errno) : "EOF");
				__atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
				return NULL;
			}
			done += r;
		}
	}
	return NULL;
}

static double run_once(int threads, const char *mode)
{
	pthread_t th[256];
	double t0, t1;
	size_t maplen = (fsize + HPAGE - 1) & ~(HPAGE - 1);
	unsigned char *raw;
	int i;

	t0 = now();
	/* 2 MiB aligned, as CRIU places large areas */
	raw = mmap(NULL, maplen + HPAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	mem = (unsigned char *)(((uintptr_t)raw + HPAGE - 1) & ~(HPAGE - 1));
	if (!strcmp(mode, "thp") && madvise(mem, maplen, MADV_HUGEPAGE))
		perror("madvise(MADV_HUGEPAGE)");
	if (!strcmp(mode, "4k") && madvise(mem, maplen, MADV_NOHUGEPAGE))
		perror("madvise(MADV_NOHUGEPAGE)");

	next_piece = 0;
	nr_pieces = (fsize + piece - 1) / piece;
	for (i = 1; i < threads; i++)
		if (pthread_create(&th[i], NULL, reader, NULL)) {
			perror("pthread_create");
			exit(1);
		}
	reader(NULL);
	for (i = 1; i < threads; i++)
		pthread_join(th[i], NULL);
	t1 = now();
	munmap(raw, maplen + HPAGE);
	if (failed)
		exit(1);
	return t1 - t0;
}

static void warm(void)
{
	static char buf[1 << 20];
	size_t off = 0;

	while (off < fsize) {
		ssize_t r = pread(fd, buf, sizeof(buf), off);

		if (r <= 0)
			break;
		off += r;
	}
}

int main(int argc, char **argv)
{
	char *tlist = "1,2,4,8,16", *mlist = "4k,default,thp", tmp[] = "/var/tmp/fill-yardstickXXXXXX";
	char *tl, *ml, *t, *m, *sp1, *sp2;
	unsigned long size_mib = 4096;
	int repeat = 3, opt, i, created = 0;
	struct stat st;

	while ((opt = getopt(argc, argv, "t:m:r:s:p:")) != -1) {
		switch (opt) {
		case 't': tlist = optarg; break;
		case 'm': mlist = optarg; break;
		case 'r': repeat = atoi(optarg); break;
		case 's': size_mib = strtoul(optarg, NULL, 0); break;
		case 'p': piece = strtoul(optarg, NULL, 0) * MiB; break;
		default:
			fprintf(stderr, "usage: %s [-t 1,2,4] [-m 4k,default,thp] [-r N] [-s MiB] [-p MiB] [FILE]\n",
				argv[0]);
			return 1;
		}
	}

	if (optind < argc) {
		fd = open(argv[optind], O_RDONLY);
		if (fd < 0 || fstat(fd, &st)) {
			perror(argv[optind]);
			return 1;
		}
		fsize = st.st_size;
	} else {
		static char buf[4 * MiB];
		size_t off;

		fd = mkstemp(tmp);
		if (fd < 0) {
			perror("mkstemp");
			return 1;
		}
		created = 1;
		unlink(tmp);
		fsize = size_mib * MiB;
		for (i = 0; i < (int)sizeof(buf); i++)
			buf[i] = (char)(i * 2654435761u >> 13);
		for (off = 0; off < fsize; off += sizeof(buf))
			if (write(fd, buf, sizeof(buf)) != sizeof(buf)) {
				perror("write");
				return 1;
			}
	}
	if (!fsize || !piece) {
		fprintf(stderr, "nothing to read\n");
		return 1;
	}
	warm();
	printf("file=%s bytes=%zu piece=%zu\n", created ? "(temporary)" : argv[optind], fsize, piece);

	tl = strdup(tlist);
	for (t = strtok_r(tl, ",", &sp1); t; t = strtok_r(NULL, ",", &sp1)) {
		int threads = atoi(t);

		if (threads < 1 || threads > 256)
			continue;
		ml = strdup(mlist);
		for (m = strtok_r(ml, ",", &sp2); m; m = strtok_r(NULL, ",", &sp2)) {
			double best = 1e30;

			for (i = 0; i < repeat; i++) {
				double s = run_once(threads, m);

				printf("  run threads=%d mode=%s s=%.3f GB/s=%.2f\n", threads, m, s, fsize / s / 1e9);
				if (s < best)
					best = s;
			}
			printf("threads=%d mode=%s bytes=%zu best_s=%.3f GB/s=%.2f\n", threads, m, fsize, best,
			       fsize / best / 1e9);
			fflush(stdout);
		}
		free(ml);
	}
	free(tl);
	return 0;
}
