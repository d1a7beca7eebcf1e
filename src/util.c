/*-------------------------------------------------------------------------
 *
 * util.c
 *	  Small helpers with no state of their own, shared by the routing, call
 *	  and worker code: SHA-256 through PostgreSQL's cryptohash, hex
 *	  formatting, the prompt hash, request ids, and the one way text is
 *	  clipped to a fixed buffer (at a character boundary).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/cryptohash.h"
#include "fmgr.h"
#include "datatype/timestamp.h"
#include "mb/pg_wchar.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "util.h"

/*
 * One SHA-256 context for the life of the backend.  pg_cryptohash contexts
 * are tracked by a resource owner; a private, never-released owner keeps it
 * from being reported as leaked at the end of the transaction that made it.
 */
static pg_cryptohash_ctx *sha256_ctx = NULL;
static ResourceOwner sha256_owner = NULL;

/*
 * CanarySha256
 *		Hash len bytes of data into digest (CANARY_SHA256_LEN bytes).
 *
 * Allocates nothing per call; raises ERROR only if the crypto library fails.
 */
void
CanarySha256(const void *data, size_t len, uint8 *digest)
{
	if (sha256_ctx == NULL)
	{
		ResourceOwner save = CurrentResourceOwner;

		if (sha256_owner == NULL)
			sha256_owner = ResourceOwnerCreate(NULL, "llm_canary sha256");
		CurrentResourceOwner = sha256_owner;
		sha256_ctx = pg_cryptohash_create(PG_SHA256);
		CurrentResourceOwner = save;
		if (sha256_ctx == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory")));
	}

	if (pg_cryptohash_init(sha256_ctx) < 0 ||
		pg_cryptohash_update(sha256_ctx, (const uint8 *) data, len) < 0 ||
		pg_cryptohash_final(sha256_ctx, digest, CANARY_SHA256_LEN) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute SHA-256 hash: %s",
						pg_cryptohash_error(sha256_ctx))));
}

/* Write nbytes as lowercase hex plus a terminating NUL into out. */
void
CanaryHex(const uint8 *bytes, int nbytes, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < nbytes; i++)
	{
		out[2 * i] = digits[bytes[i] >> 4];
		out[2 * i + 1] = digits[bytes[i] & 0xf];
	}
	out[2 * nbytes] = '\0';
}

/*
 * CanaryPromptHash
 *		The article's prompt_hash: first 16 hex digits of SHA-256 of the
 *		prompt.  out17 must have room for 17 bytes.
 */
void
CanaryPromptHash(const char *prompt, size_t len, char *out17)
{
	uint8		digest[CANARY_SHA256_LEN];

	CanarySha256(prompt, len, digest);
	CanaryHex(digest, 8, out17);
}

/*
 * CanaryNewRequestId
 *		A new time-ordered (version 7, RFC 9562) UUID: the request_id of a
 *		call.  Its first 48 bits are the Unix time in milliseconds, the
 *		other 74 (but version and variant) random; canary_feedback reads
 *		the time back (canary_request_time) to look the request up in the
 *		partitions of its day only.
 */
void
CanaryNewRequestId(pg_uuid_t *id)
{
	uint64		ms = (uint64) (GetCurrentTimestamp() / 1000 +
							   (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) *
							   SECS_PER_DAY * 1000);

	if (!pg_strong_random(id->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	for (int i = 0; i < 6; i++)
		id->data[i] = (uint8) (ms >> (40 - 8 * i));
	id->data[6] = (id->data[6] & 0x0f) | 0x70;	/* version 7 */
	id->data[8] = (id->data[8] & 0x3f) | 0x80;	/* variant 10 */
}

PG_FUNCTION_INFO_V1(canary_new_request_id);

/* canary_new_request_id(): CanaryNewRequestId for SQL (canary_submit). */
Datum
canary_new_request_id(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

	CanaryNewRequestId(id);
	PG_RETURN_UUID_P(id);
}

/*
 * CanaryClipCopy
 *		Copy len bytes of src (text in the database encoding, not necessarily
 *		NUL-terminated) into dst, a buffer of dstsize bytes, NUL-terminated
 *		and clipped at a character boundary, so that the copy is always
 *		valid text.  Every fixed-size text field that may receive user input
 *		is filled through this function.  Never raises for valid input.
 */
void
CanaryClipCopy(char *dst, int dstsize, const char *src, int len)
{
	Assert(dstsize > 0);
	if (len >= dstsize)
		len = pg_mbcliplen(src, len, dstsize - 1);
	memcpy(dst, src, len);
	dst[len] = '\0';
}
