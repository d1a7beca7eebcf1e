/*-------------------------------------------------------------------------
 *
 * webhook.c
 *	  Delivery of alert payloads to llm_canary.webhook_url, by the
 *	  background worker, after the trip committed.
 *
 * canary_raise_alert() records every alert with webhook_status 'pending';
 * the worker picks pending alerts up about once a second, POSTs each payload
 * (JSON) and records the outcome: 'delivered' on a 2xx answer, otherwise a
 * retry after 2^attempts seconds, up to WEBHOOK_MAX_ATTEMPTS, then 'failed'.
 * With no webhook configured, pending alerts are marked 'none'.  Delivery
 * never delays or undoes a trip: the trip committed before we run.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "http.h"
#include "webhook.h"

#define WEBHOOK_MAX_ATTEMPTS	5
#define WEBHOOK_BATCH			10
#define WEBHOOK_TIMEOUT_MS		5000
#define WEBHOOK_CONNECT_TIMEOUT_MS 2000

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

/*
 * WebhookDeliverPending
 *		Deliver (or settle) the pending alerts of the extension in schema.
 *		Caller must be in a transaction with SPI connected and a snapshot.
 */
void
WebhookDeliverPending(const char *schema)
{
	StringInfoData sql;
	int			ret;
	uint64		n;
	int64	   *ids;
	char	  **payloads;
	int		   *attempts;
	bool		configured = canary_webhook_url != NULL && canary_webhook_url[0] != '\0';

	initStringInfo(&sql);
	if (!configured)
	{
		appendStringInfo(&sql,
						 "UPDATE %s.canary_alerts SET webhook_status = 'none'"
						 " WHERE webhook_status = 'pending'", schema);
		if (SPI_execute(sql.data, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update canary_alerts");
		return;
	}

	appendStringInfo(&sql,
					 "SELECT id, payload::text, webhook_attempts FROM %s.canary_alerts"
					 " WHERE webhook_status = 'pending'"
					 " AND (webhook_next_at IS NULL OR webhook_next_at <= now())"
					 " ORDER BY id LIMIT %d FOR UPDATE SKIP LOCKED",
					 schema, WEBHOOK_BATCH);
	ret = SPI_execute(sql.data, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read canary_alerts: SPI error %d", ret);
	n = SPI_processed;
	if (n == 0)
		return;
	ids = palloc(sizeof(int64) * n);
	payloads = palloc(sizeof(char *) * n);
	attempts = palloc(sizeof(int) * n);
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		payloads[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		attempts[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &isnull));
	}

	for (uint64 i = 0; i < n; i++)
	{
		char		errbuf[CURL_ERROR_SIZE];
		long		status = WebhookPost(canary_webhook_url, payloads[i], errbuf);
		bool		ok = status >= 200 && status < 300;
		int			tries = attempts[i] + 1;
		Oid			types[3] = {INT8OID, TEXTOID, INT4OID};
		Datum		args[3];
		char	   *error;

		if (ok)
			error = NULL;
		else if (status != 0)
			error = psprintf("HTTP status %ld", status);
		else
			error = pstrdup(errbuf);

		resetStringInfo(&sql);
		appendStringInfo(&sql,
						 "UPDATE %s.canary_alerts SET webhook_attempts = $3,"
						 " webhook_status = CASE WHEN $2 IS NULL THEN 'delivered'"
						 "   WHEN $3 >= %d THEN 'failed' ELSE 'pending' END,"
						 " delivered_at = CASE WHEN $2 IS NULL THEN now() END,"
						 " webhook_last_error = $2,"
						 " webhook_next_at = now() + make_interval(secs => power(2, $3))"
						 " WHERE id = $1",
						 schema, WEBHOOK_MAX_ATTEMPTS);
		args[0] = Int64GetDatum(ids[i]);
		args[1] = error ? CStringGetTextDatum(error) : (Datum) 0;
		args[2] = Int32GetDatum(tries);
		ret = SPI_execute_with_args(sql.data, 3, types, args,
									error ? "   " : " n ", false, 0);
		if (ret != SPI_OK_UPDATE)
			elog(ERROR, "could not update canary_alerts: SPI error %d", ret);
		if (!ok)
			ereport(LOG,
					(errmsg("llm_canary could not deliver alert %lld to the webhook: %s",
							(long long) ids[i], error)));
	}
}
