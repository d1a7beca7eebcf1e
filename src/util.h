/*-------------------------------------------------------------------------
 *
 * util.h
 *	  Small helpers with no state of their own (util.c): SHA-256 through
 *	  PostgreSQL's cryptohash, hex formatting, the article's prompt hash,
 *	  request ids, and clipping text at a character boundary.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_UTIL_H
#define LLM_CANARY_UTIL_H

#include "postgres.h"

#include "utils/uuid.h"

#define CANARY_SHA256_LEN 32

extern void CanarySha256(const void *data, size_t len, uint8 *digest);
extern void CanaryHex(const uint8 *bytes, int nbytes, char *out);
extern void CanaryPromptHash(const char *prompt, size_t len, char *out17);
extern void CanaryNewRequestId(pg_uuid_t *id);
extern void CanaryClipCopy(char *dst, int dstsize, const char *src, int len);

#endif							/* LLM_CANARY_UTIL_H */
