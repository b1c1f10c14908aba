/* Input of slurm-headers/build.rs: bindgen runs over this file. */
#include <slurm/spank.h>
#include <slurm/slurm_version.h>
