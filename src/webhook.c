/*-------------------------------------------------------------------------
 *
 * webhook.c
 *	  Delivery of alert payloads to llm_canary.webhook_url, by the
 *	  background worker, after the trip committed.
 *
 * canary_raise_alert() records every alert with webhook_status 'pending';
 * the monitor worker (monitor_worker.c) picks pending alerts up about once a
 * second, one at a time: it claims one in a short transaction (a lease on
 * webhook_next_at, no row lock held across the network), POSTs the payload
 * (JSON) outside any transaction and records the outcome in another:
 * 'delivered' on a 2xx answer, otherwise a retry after 2^attempts seconds,
 * up to WEBHOOK_MAX_ATTEMPTS, then 'failed'.  A monitor that dies during
 * the POST leaves the alert pending; it is tried again when the lease ends.
 * With no webhook configured, pending alerts are marked 'none'.  Delivery
 * never delays or undoes a trip (the trip committed before we run), and it
 * never delays metric writes or shadow calls (another process).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "http.h"
#include "webhook.h"
#include "worker.h"

#define WEBHOOK_MAX_ATTEMPTS	5
#define WEBHOOK_TIMEOUT_MS		5000
#define WEBHOOK_CONNECT_TIMEOUT_MS 2000
#define WEBHOOK_LEASE_S			60	/* a claimed alert waits this long for its outcome */

/* settings */
static char *canary_webhook_url = NULL;

/* Define llm_canary.webhook_url; called from _PG_init. */
void
WebhookInit(void)
{
	DefineCustomStringVariable("llm_canary.webhook_url",
							   "Sets the URL that receives kill-switch alert payloads as a POST.",
							   "Empty disables the webhook; alerts are still recorded and sent with NOTIFY llm_canary_alerts.",
							   &canary_webhook_url,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
}

static CURL *webhook_curl = NULL;

/*
 * POST one payload.  Returns the HTTP status (0 when no answer), and in
 * errbuf (CURL_ERROR_SIZE) libcurl's error text.  Never raises.
 */
static long
WebhookPost(const char *url, const char *payload, char *errbuf)
{
	HttpPost	post;
	CURLcode	rc;
	long		status = 0;

	errbuf[0] = '\0';
	if (webhook_curl == NULL)
		webhook_curl = curl_easy_init();
	if (webhook_curl == NULL)
	{
		strlcpy(errbuf, "could not create a libcurl handle", CURL_ERROR_SIZE);
		return 0;
	}
	curl_easy_reset(webhook_curl);
	/* the one set-up of every outbound POST (http.h); the answer is discarded */
	memset(&post, 0, sizeof(post));
	post.url = url;
	post.body = payload;
	post.body_len = strlen(payload);
	post.headers = HttpJsonHeaders();
	post.connect_timeout_ms = WEBHOOK_CONNECT_TIMEOUT_MS;
	post.timeout_ms = WEBHOOK_TIMEOUT_MS;
	post.errbuf = errbuf;
	if (post.headers == NULL || !HttpEasySetup(webhook_curl, &post))
	{
		strlcpy(errbuf, "out of memory", CURL_ERROR_SIZE);
		rc = CURLE_OUT_OF_MEMORY;
	}
	else
		rc = curl_easy_perform(webhook_curl);
	if (rc == CURLE_OK)
		curl_easy_getinfo(webhook_curl, CURLINFO_RESPONSE_CODE, &status);
	else if (errbuf[0] == '\0')
		strlcpy(errbuf, curl_easy_strerror(rc), CURL_ERROR_SIZE);
	curl_easy_setopt(webhook_curl, CURLOPT_HTTPHEADER, NULL);
	if (post.headers != NULL)
		curl_slist_free_all(post.headers);
	return status;
}

/* One alert claimed for delivery. */
typedef struct WebhookClaim
{
	MemoryContext cxt;			/* payload lives here, beyond the transaction */
	bool		found;
	int64		id;
	char	   *payload;
	int			attempts;		/* before this one */
	long		status;			/* HTTP status of this attempt, 0: none */
	char		errbuf[CURL_ERROR_SIZE];
} WebhookClaim;

/*
 * Claim the oldest due pending alert: push its webhook_next_at out by
 * WEBHOOK_LEASE_S, so that no other delivery takes it, and commit; the row
 * lock ends with this short transaction, never held across the network.
 * With no webhook configured, settle every pending alert as 'none'.
 * Runs in a worker transaction (WorkerRunStep).
 */
static void
WebhookClaimStep(const char *schema, void *arg)
{
	WebhookClaim *claim = (WebhookClaim *) arg;
	StringInfoData sql;
	bool		isnull;
	char	   *payload;
	int			ret;

	claim->found = false;
	initStringInfo(&sql);
	if (canary_webhook_url == NULL || canary_webhook_url[0] == '\0')
	{
		appendStringInfo(&sql,
						 "UPDATE %s.canary_alerts SET webhook_status = 'none'"
						 " WHERE webhook_status = 'pending'", schema);
		if (SPI_execute(sql.data, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update canary_alerts");
		return;
	}

	appendStringInfo(&sql,
					 "UPDATE %s.canary_alerts a"
					 " SET webhook_next_at = now() + make_interval(secs => %d)"
					 " WHERE a.id = (SELECT id FROM %s.canary_alerts"
					 "   WHERE webhook_status = 'pending'"
					 "   AND (webhook_next_at IS NULL OR webhook_next_at <= now())"
					 "   ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
					 " RETURNING a.id, a.payload::text, a.webhook_attempts",
					 schema, WEBHOOK_LEASE_S, schema);
	ret = SPI_execute(sql.data, false, 0);
	if (ret != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not claim an alert of canary_alerts: SPI error %d", ret);
	if (SPI_processed == 0)
		return;
	claim->id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	payload = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	claim->payload = MemoryContextStrdup(claim->cxt, payload ? payload : "{}");
	claim->attempts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	claim->found = true;
}

/*
 * Record the outcome of one attempt: 'delivered' on a 2xx answer, otherwise
 * a retry after 2^attempts seconds, up to WEBHOOK_MAX_ATTEMPTS, then
 * 'failed'.  Runs in a worker transaction (WorkerRunStep).
 */
static void
WebhookRecordStep(const char *schema, void *arg)
{
	WebhookClaim *claim = (WebhookClaim *) arg;
	bool		ok = claim->status >= 200 && claim->status < 300;
	int			tries = claim->attempts + 1;
	Oid			types[3] = {INT8OID, TEXTOID, INT4OID};
	Datum		args[3];
	char	   *error;
	char	   *sql;
	int			ret;

	if (ok)
		error = NULL;
	else if (claim->status != 0)
		error = psprintf("HTTP status %ld", claim->status);
	else
		error = pstrdup(claim->errbuf);

	sql = psprintf("UPDATE %s.canary_alerts SET webhook_attempts = $3,"
				   " webhook_status = CASE WHEN $2 IS NULL THEN 'delivered'"
				   "   WHEN $3 >= %d THEN 'failed' ELSE 'pending' END,"
				   " delivered_at = CASE WHEN $2 IS NULL THEN now() END,"
				   " webhook_last_error = $2,"
				   " webhook_next_at = now() + make_interval(secs => power(2, $3))"
				   " WHERE id = $1",
				   schema, WEBHOOK_MAX_ATTEMPTS);
	args[0] = Int64GetDatum(claim->id);
	args[1] = error ? CStringGetTextDatum(error) : (Datum) 0;
	args[2] = Int32GetDatum(tries);
	ret = SPI_execute_with_args(sql, 3, types, args, error ? "   " : " n ", false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not update canary_alerts: SPI error %d", ret);
	if (!ok)
		ereport(LOG,
				(errmsg("llm_canary could not deliver alert %lld to the webhook: %s",
						(long long) claim->id, error)));
}

/*
 * WebhookDeliverNext
 *		Deliver (or settle) one pending alert: claim it in a short
 *		transaction, POST it outside any transaction (at most the
 *		connect and transfer timeouts), record the outcome in another.
 *		Returns true when an alert was attempted (there may be more).
 *		Caller: the monitor worker, outside a transaction; allocates in the
 *		current memory context.
 */
bool
WebhookDeliverNext(void)
{
	WebhookClaim claim;

	memset(&claim, 0, sizeof(claim));
	claim.cxt = CurrentMemoryContext;
	if (WorkerRunStep("llm_canary: claiming an alert for the webhook",
					  WebhookClaimStep, &claim) != WORKER_STEP_OK ||
		!claim.found)
		return false;

	pgstat_report_activity(STATE_RUNNING, "llm_canary: alert webhook");
	claim.status = WebhookPost(canary_webhook_url, claim.payload, claim.errbuf);
	pgstat_report_activity(STATE_IDLE, NULL);

	(void) WorkerRunStep("llm_canary: recording an alert delivery",
						 WebhookRecordStep, &claim);
	return true;
}
