#ifndef REGENT_CLIBPQ_SHIM_H
#define REGENT_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#endif
