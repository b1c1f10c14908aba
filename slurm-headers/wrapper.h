/* Input of slurm-headers/build.rs: bindgen runs over this file. */
#include <slurm/spank.h>
#include <slurm/slurm_version.h>
/* slurm_conf_t: the plugin reads TaskProlog from slurmstepd's slurm_conf. */
#include <slurm/slurm.h>
