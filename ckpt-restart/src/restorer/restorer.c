/*
 * Stage 2 of restore: the part that replaces the restart helper's memory
 * with the checkpointed program's.
 *
 * Everything in this file lives in the `ckpt_rst` section. Stage 1 copies
 * that section into a fresh mapping chosen so that it overlaps neither the
 * helper nor any saved region, and jumps to ckpt_rst_entry() on a stack
 * inside the same mapping. The code is position independent, uses no libc,
 * no global data and no string constants (which would live outside the
 * section): only raw system calls and the argument block.
 *
 * Steps: unregister the helper's rseq area, unmap every helper mapping,
 * map the vDSO at its saved address, map every saved region and read its
 * pages straight into place (verifying CRC-32C) from the image, or for
 * pages an incremental image inherits, from an older generation's, restore
 * mm fields (brk, arg/env, auxv, exe), copy the thread table into the
 * restored libckpt and jump to its ckpt_restore_finish() on the main
 * thread's restored stack. On any failure: write a short message to the
 * error fd and exit with status 86, so that the restart can fall back to
 * an older generation.
 */
#include <stdint.h>
#include "restorer.h"

#define SEC __attribute__((section("ckpt_rst"), used, noinline))
#define SECI __attribute__((section("ckpt_rst"), used, always_inline)) static inline

SECI long sys6(long n, long a, long b, long c, long d, long e, long f) {
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9) : "rcx", "r11", "memory");
	return ret;
}
#define sys3(n, a, b, c) sys6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)

/* Bytes read (and then checksummed) at a time. */
#define CHUNK (4UL << 20)

#define NR_read 0
#define NR_write 1
#define NR_close 3
#define NR_mmap 9
#define NR_mprotect 10
#define NR_munmap 11
#define NR_pread64 17
#define NR_madvise 28
#define NR_prctl 157
#define NR_arch_prctl 158
#define NR_fadvise64 221
#define NR_exit_group 231
#define NR_fallocate 285
#define NR_rseq 334

/* Report the failing step to the init through the status pipe (a record
 * of struct rst_failure; the init prints a message naming the image file
 * and region) and exit. */
SEC static void die(struct rst_args *a, uint64_t code, uint64_t what, long err) {
	struct rst_failure f;
	f.code = (uint32_t)code;
	f.pid = (int32_t)a->pid;
	f.addr = what;
	f.err = -err;
	sys3(NR_write, a->status_fd, &f, sizeof(f));
	sys3(NR_exit_group, RST_EXIT_FAILED, 0, 0);
	for (;;) {}
}

/* CRC-32C as in ckpt-core/src/image/checksum.rs: three crc32 streams over
 * consecutive 4 KiB blocks (the instruction's latency is three cycles, its
 * throughput one per cycle), combined by shifting the first two registers
 * over the bytes that follow them. */
#define STREAM 4096UL

/* a * b mod P, bit-reflected (x^0 is the top bit). */
SEC static uint32_t multmodp(uint32_t a, uint32_t b) {
	uint32_t m = 1U << 31, p = 0;
	for (;;) {
		if (a & m) {
			p ^= b;
			if ((a & (m - 1)) == 0)
				break;
		}
		m >>= 1;
		b = (b & 1) ? (b >> 1) ^ 0x82F63B78U : b >> 1;
	}
	return p;
}

/* x^(8n) mod P: multiplying a register by it appends n zero bytes. */
SEC static uint32_t shift_bytes(uint64_t n) {
	uint32_t result = 1U << 31, square = 1U << 30;
	for (uint64_t e = n * 8; e; e >>= 1) {
		if (e & 1)
			result = multmodp(square, result);
		square = multmodp(square, square);
	}
	return result;
}

struct crc_shifts { uint32_t one, two; };

SEC static uint32_t crc32c_update(uint32_t crc, const uint8_t *p, uint64_t len, struct crc_shifts k) {
	while (len >= 3 * STREAM) {
		uint64_t c0 = crc, c1 = 0, c2 = 0;
		for (uint64_t i = 0; i < STREAM; i += 8) {
			uint64_t a = *(const uint64_t *)(p + i);
			uint64_t b = *(const uint64_t *)(p + STREAM + i);
			uint64_t c = *(const uint64_t *)(p + 2 * STREAM + i);
			__asm__("crc32q %1, %0" : "+r"(c0) : "rm"(a));
			__asm__("crc32q %1, %0" : "+r"(c1) : "rm"(b));
			__asm__("crc32q %1, %0" : "+r"(c2) : "rm"(c));
		}
		crc = multmodp(k.two, (uint32_t)c0) ^ multmodp(k.one, (uint32_t)c1) ^ (uint32_t)c2;
		p += 3 * STREAM;
		len -= 3 * STREAM;
	}
	uint64_t c = crc;
	while (len >= 8) {
		uint64_t v = *(const uint64_t *)p;
		__asm__("crc32q %1, %0" : "+r"(c) : "rm"(v));
		p += 8;
		len -= 8;
	}
	uint32_t c32 = (uint32_t)c;
	while (len--) {
		uint8_t v = *p++;
		__asm__("crc32b %1, %0" : "+r"(c32) : "rm"(v));
	}
	return c32;
}

SEC static void read_full(struct rst_args *a, long fd, uint64_t addr, uint64_t len, uint64_t off) {
	while (len > 0) {
		uint64_t chunk = len > (1UL << 30) ? (1UL << 30) : len;
		long r = sys6(NR_pread64, fd, (long)addr, (long)chunk, (long)off, 0, 0);
		if (r == -4) /* EINTR */
			continue;
		if (r <= 0)
			die(a, 3, addr, r < 0 ? r : -5);
		addr += (uint64_t)r;
		len -= (uint64_t)r;
		off += (uint64_t)r;
	}
}

/* Checked against the Rust mirror by a unit test (restore/blob.rs). */
__attribute__((used)) const uint64_t ckpt_rst_args_size = sizeof(struct rst_args);

SEC void ckpt_rst_main(struct rst_args *a) {
	long r;
	/* 1. The helper's rseq area is about to be unmapped: unregister it. */
	if (a->helper_rseq)
		sys6(NR_rseq, (long)a->helper_rseq, 32, 1 /* RSEQ_FLAG_UNREGISTER */, a->helper_rseq_sig, 0, 0);

	/* 2. Remove every mapping of the helper except this one. */
	for (uint64_t i = 0; i < a->n_unmap; i++) {
		r = sys3(NR_munmap, a->unmap[i].start, a->unmap[i].end - a->unmap[i].start, 0);
		if (r < 0)
			die(a, 1, a->unmap[i].start, r);
	}

	/* 3. The vDSO block at its saved address. */
	if (a->vvar) {
		r = sys3(NR_arch_prctl, 0x2003 /* ARCH_MAP_VDSO_64 */, a->vvar, 0);
		if (r < 0)
			die(a, 2, a->vvar, r);
	}

	/* 3b. Another kernel build's vDSO: the old one's address range gets
	 * the jump table to the new one. */
	if (a->stub_len) {
		r = sys6(NR_mmap, (long)a->stub_addr, (long)a->stub_len, 0x1 | 0x2,
			 0x10 | 0x02 | 0x20 /* FIXED|PRIVATE|ANONYMOUS */, -1, 0);
		if (r != (long)a->stub_addr)
			die(a, 2, a->stub_addr, r);
		uint8_t *sd = (uint8_t *)a->stub_addr;
		const uint8_t *ss = (const uint8_t *)a->stub_src;
		for (uint64_t i = 0; i < a->stub_len; i++)
			sd[i] = ss[i];
		r = sys3(NR_mprotect, a->stub_addr, a->stub_len, 0x1 | 0x4 /* READ|EXEC */);
		if (r < 0)
			die(a, 2, a->stub_addr, r);
	}

	/* 4. Regions. */
	struct crc_shifts shifts = { shift_bytes(STREAM), shift_bytes(2 * STREAM) };
	struct rst_region *regs = (struct rst_region *)a->regions;
	uint64_t *runs = (uint64_t *)a->runs;
	for (uint64_t i = 0; i < a->n_regions; i++) {
		struct rst_region *g = &regs[i];
		uint64_t len = g->end - g->start;
		long flags = 0x10 /* MAP_FIXED */;
		long fd = -1;
		switch (g->kind) {
		case RST_ANON: flags |= 0x02 | 0x20; break;        /* PRIVATE|ANONYMOUS */
		case RST_SHARED_ANON: flags |= 0x01 | 0x20; break; /* SHARED|ANONYMOUS */
		case RST_FILE: flags |= 0x02; fd = g->fd; break;
		case RST_SHARED_FILE: flags |= 0x01; fd = g->fd; break;
		}
		if (g->growsdown)
			flags |= 0x0100; /* MAP_GROWSDOWN */
		long prot = (long)g->prot;
		if (g->nruns)
			prot |= 0x1 | 0x2; /* readable and writable while filling */
		r = sys6(NR_mmap, (long)g->start, (long)len, prot, flags, fd, (long)g->offset);
		if (r != (long)g->start)
			die(a, 4, g->start, r);
		if (g->hugepage)
			sys3(NR_madvise, g->start, len, 14 /* MADV_HUGEPAGE */);
		/* The program's children rely on these (docs/signals.md). Nothing
		 * forks between here and the program's own code. */
		if (g->fork_advice & 1) {
			r = sys3(NR_madvise, g->start, len, 10 /* MADV_DONTFORK */);
			if (r < 0)
				die(a, 9, g->start, r);
		}
		if (g->fork_advice & 2) {
			r = sys3(NR_madvise, g->start, len, 18 /* MADV_WIPEONFORK */);
			if (r < 0)
				die(a, 9, g->start, r);
		}
		uint32_t crc = 0xffffffffu;
		for (uint64_t k = 0; k < g->nruns; k++) {
			const uint64_t *run = &runs[g->runs_index + 4 * k];
			uint64_t addr = g->start + run[0] * 4096;
			if (run[2] >= a->n_img)
				die(a, 3, addr, -22 /* EINVAL */);
			/* In chunks, so that the checksum reads what was just read
			 * while it is still in the cache. */
			for (uint64_t done = 0, len = run[1] * 4096; done < len; done += CHUNK) {
				uint64_t n = len - done < CHUNK ? len - done : CHUNK;
				read_full(a, a->img_fds[run[2]], addr + done, n, run[3] + done);
				if (a->verify)
					crc = crc32c_update(crc, (const uint8_t *)(addr + done), n, shifts);
				if (a->img_drop[run[2]] == RST_IMG_DROP)
					sys6(NR_fadvise64, a->img_fds[run[2]], (long)(run[3] + done), (long)n,
					     4 /* POSIX_FADV_DONTNEED */, 0, 0);
				else if (a->img_drop[run[2]] == RST_IMG_PUNCH)
					sys6(NR_fallocate, a->img_fds[run[2]],
					     0x01 | 0x02 /* FALLOC_FL_KEEP_SIZE|PUNCH_HOLE */,
					     (long)(run[3] + done), (long)n, 0, 0);
			}
		}
		if (a->verify && g->nruns && (~crc) != g->crc)
			die(a, 5, g->start, -74 /* EBADMSG */);
		if (prot != (long)g->prot) {
			r = sys3(NR_mprotect, g->start, len, g->prot);
			if (r < 0)
				die(a, 6, g->start, r);
		}
	}
	for (uint64_t i = 0; i < a->n_regions; i++)
		if (regs[i].fd >= 0 && regs[i].close_fd)
			sys3(NR_close, regs[i].fd, 0, 0);

	/* 5. mm fields: brk, arg/env, auxv, and the exe link when allowed. */
	a->mm.exe_fd = (uint32_t)a->exe_fd;
	r = sys6(NR_prctl, 35 /* PR_SET_MM */, 14 /* PR_SET_MM_MAP */, (long)&a->mm, sizeof(a->mm), 0, 0);
	if (r < 0) {
		a->mm.exe_fd = (uint32_t)-1;
		r = sys6(NR_prctl, 35, 14, (long)&a->mm, sizeof(a->mm), 0, 0);
		if (r < 0)
			die(a, 7, a->mm.brk, r);
	}
	if (a->exe_fd >= 0)
		sys3(NR_close, a->exe_fd, 0, 0);
	for (uint64_t i = 0; i < a->n_img && i < RST_MAX_IMAGES; i++) {
		/* Again for the whole file: pages still being read ahead while
		 * their chunk was dropped stayed. */
		if (a->img_drop[i] == RST_IMG_DROP)
			sys6(NR_fadvise64, a->img_fds[i], 0, 0, 4 /* POSIX_FADV_DONTNEED */, 0, 0);
		sys3(NR_close, a->img_fds[i], 0, 0);
	}
	sys3(NR_close, a->err_fd, 0, 0);

	/* 6. Hand over to the restored libckpt. */
	uint8_t *dst = (uint8_t *)a->finish_args_dst;
	const uint8_t *src = (const uint8_t *)a->finish_args_src;
	for (uint64_t i = 0; i < a->finish_args_len; i++)
		dst[i] = src[i];
	uint8_t *sdst = (uint8_t *)a->socket_dst;
	for (uint64_t i = 0; i < 256; i++)
		sdst[i] = a->socket[i];
	__asm__ volatile(
		"mov %0, %%rsp\n"
		"mov %1, %%rdi\n"
		"call *%2\n"
		"ud2\n"
		:
		: "r"(a->finish_sp), "r"(a->finish_args_dst), "r"(a->finish_fn)
		: "memory");
	for (;;) {}
}

/* Entry: switch to the stack inside this mapping, then run. */
__asm__(
	".pushsection ckpt_rst,\"ax\",@progbits\n"
	".globl ckpt_rst_entry\n"
	".type ckpt_rst_entry,@function\n"
	"ckpt_rst_entry:\n"
	"	mov %rsi, %rsp\n"
	"	and $-16, %rsp\n"
	"	call ckpt_rst_main\n"
	"	ud2\n"
	".popsection\n");
