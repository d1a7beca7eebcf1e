# llm_canary: PGXS build.
#
# The C sources are every file in src/ (one concern per file).  The install
# script of the current version is generated from the ordered parts in
# sql/parts/; released install scripts (sql/llm_canary--1.0.sql) are frozen
# as shipped and never edited.  Each upgrade script is generated from the
# ordered fragments in sql/updates/FROM--TO/.  The regression tests are
# every file in test/sql/ (expected output in expected/).

EXTENSION   = llm_canary
EXTVERSION  = 1.1
MODULE_big  = llm_canary
OBJS        = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
DATA        = sql/$(EXTENSION)--1.0.sql
DATA_built  = sql/$(EXTENSION)--$(EXTVERSION).sql sql/$(EXTENSION)--1.0--1.1.sql
SQL_PARTS   = $(sort $(wildcard sql/parts/*.sql))
UPDATE_1_1  = $(sort $(wildcard sql/updates/1.0--1.1/*.sql))

PG_CPPFLAGS = -I$(srcdir)/src
# LLM_CANARY_FORCE_OLD_CURL=1 builds the libcurl < 7.85 fallback of
# src/http.c with a newer libcurl, so that CI compiles and tests it
# (.ci/run).  Run `make clean` when switching.
ifdef LLM_CANARY_FORCE_OLD_CURL
PG_CPPFLAGS += -DLLM_CANARY_FORCE_OLD_CURL
endif
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

# The folders are prerequisites too: removing or renaming a part changes
# the folder's time, which a list of the remaining (older) files would miss.
sql/$(EXTENSION)--$(EXTVERSION).sql: $(SQL_PARTS) sql/parts
	cat $(SQL_PARTS) > $@

sql/$(EXTENSION)--1.0--1.1.sql: $(UPDATE_1_1) sql/updates/1.0--1.1
	cat $(UPDATE_1_1) > $@

# Integration tests (TAP, PostgreSQL::Test::Cluster) live in test/t/.
PROVE_TESTS = test/t/*.pl

tapcheck:
	$(prove_installcheck)

.PHONY: tapcheck
