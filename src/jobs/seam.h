/* seam.h — moved to core/seam.h (the rules engine uses it too). */
#ifndef SD_JOBS_SEAM_H
#define SD_JOBS_SEAM_H

#include "core/seam.h"

#endif
