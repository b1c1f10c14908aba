/* Argument block shared by stage 1 (Rust, ckpt-restart/src/restore/blob.rs)
 * and stage 2 (restorer.c). Keep both in step: the Rust side mirrors these
 * structs with #[repr(C)] and a size assertion. */
#ifndef CKPT_RESTORER_H
#define CKPT_RESTORER_H
#include <stdint.h>

#define RST_ANON 0
#define RST_SHARED_ANON 1
#define RST_FILE 2
#define RST_SHARED_FILE 3
#define RST_EXIT_FAILED 86
/* The restored generation's image and those of its bases. */
#define RST_MAX_IMAGES 66
#define RST_IMG_DROP 1
#define RST_IMG_PUNCH 2

struct rst_range { uint64_t start, end; };

/* What stage 2 writes to the status pipe when it fails (success is 'K'). */
struct rst_failure {
	uint32_t code; /* step, see restore/tree.rs describe_failure() */
	int32_t pid;
	uint64_t addr;
	int64_t err; /* positive errno */
};

struct rst_region {
	uint64_t start, end;
	uint64_t offset;      /* file offset */
	uint64_t data_offset; /* in the image file */
	uint64_t runs_index;  /* index into runs[] (u64 units, 4 per run) */
	uint64_t nruns;
	uint32_t prot;
	uint32_t kind;
	int32_t fd;
	uint32_t crc;
	uint8_t growsdown, hugepage, close_fd;
	uint8_t fork_advice; /* bit 0 MADV_DONTFORK, bit 1 MADV_WIPEONFORK */
	uint8_t pad[4];
};

struct prctl_mm_map_k {
	uint64_t start_code, end_code, start_data, end_data, start_brk, brk, start_stack;
	uint64_t arg_start, arg_end, env_start, env_end;
	uint64_t auxv;
	uint32_t auxv_size;
	uint32_t exe_fd;
};

struct rst_args {
	int64_t pid;
	uint64_t helper_rseq;
	uint64_t helper_rseq_sig;
	uint64_t vvar;
	uint64_t n_img;
	int64_t img_fds[RST_MAX_IMAGES];
	int64_t exe_fd;
	int64_t err_fd;
	int64_t status_fd;
	uint64_t verify;
	uint64_t n_unmap;
	struct rst_range unmap[256];
	uint64_t n_regions;
	uint64_t regions; /* struct rst_region * */
	uint64_t runs;    /* uint64_t[4] per run: first page, count, image index, file offset */
	struct prctl_mm_map_k mm;
	uint64_t finish_fn;
	uint64_t finish_sp;
	uint64_t finish_args_dst;
	uint64_t finish_args_src;
	uint64_t finish_args_len;
	uint64_t socket_dst;
	uint8_t socket[256];
	/* The vDSO of another kernel build (restore/vdso.rs): a jump table of
	 * stub_len bytes, copied from stub_src to stub_addr (the old vDSO's
	 * address) and made executable; stub_len 0: none. */
	uint64_t stub_addr;
	uint64_t stub_len;
	uint64_t stub_src;
	/* Per image: RST_IMG_DROP = drop what was read from the page cache (the
	 * image was not cached when the restart began: it leaves the cache as it
	 * found it); RST_IMG_PUNCH = the descriptor is a memory file holding a
	 * compressed image decompressed: free what was read (punch a hole). */
	uint64_t img_drop[RST_MAX_IMAGES];
};
#endif
