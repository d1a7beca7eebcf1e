# llm_canary: PGXS build.
#
# The C sources are every file in src/ (one concern per file); the install
# script is generated from the ordered parts in sql/parts/; the regression
# tests are every file in test/sql/ (expected output in expected/).

EXTENSION   = llm_canary
EXTVERSION  = 1.0
MODULE_big  = llm_canary
OBJS        = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
DATA_built  = sql/$(EXTENSION)--$(EXTVERSION).sql
SQL_PARTS   = $(sort $(wildcard sql/parts/*.sql))

PG_CPPFLAGS = -I$(srcdir)/src
PG_CFLAGS   = -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers
SHLIB_LINK  = -lcurl

REGRESS      = $(patsubst test/sql/%.sql,%,$(sort $(wildcard test/sql/*.sql)))
REGRESS_OPTS = --inputdir=test --temp-config=$(srcdir)/test/regress.conf \
               --temp-instance=$(CURDIR)/tmp_check

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: rebuild every object when a header
# changes (structs in shared memory must agree across files).
$(OBJS): $(wildcard src/*.h)

sql/$(EXTENSION)--$(EXTVERSION).sql: $(SQL_PARTS)
	cat $^ > $@

# Integration tests (TAP, PostgreSQL::Test::Cluster) live in test/t/.
PROVE_TESTS = test/t/*.pl

tapcheck:
	$(prove_installcheck)

.PHONY: tapcheck
