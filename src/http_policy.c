/*-------------------------------------------------------------------------
 *
 * http_policy.c
 *	  Where a model's API key may come from and where it may go: the
 *	  superuser-only key policy of the outbound HTTP layer (http.h), the
 *	  request headers that carry the key, and its redaction.
 *
 * api_key_env names an environment variable of the server process, and
 * llm_canary_admin (not a superuser) may set it and base_url.  Without a
 * policy a member of that role could name POSTGRES_PASSWORD, or a cloud
 * credential, and point base_url at a server it controls.  So only a
 * superuser decides:
 *
 *	 llm_canary.api_key_env_prefix  variables whose name starts with it may
 *									hold keys (default LLM_CANARY_KEY_)
 *	 llm_canary.api_key_env_names   and these, by exact name (default none)
 *	 llm_canary.allowed_hosts		hosts models may be called at (default
 *									empty: any host)
 *	 llm_canary.allow_http_keys		a key may go over plain http:// to a host
 *									that is not loopback (default off)
 *
 * HttpModelHeaders applies the policy at send time, on every path that
 * sends a model request (canary_call, canary_probe, shadow calls,
 * embeddings), and it is the only place that reads a key from the
 * environment for sending.  The canary_models trigger checks the same
 * rules when a row is written (canary_models_check_policy), so a bad
 * configuration fails early with SQLSTATE 42501; the send-time check stays,
 * for rows written before a superuser tightened the settings.
 *
 * Loopback is decided from the URL alone: "localhost", 127.0.0.0/8 and
 * ::1.  A name that merely resolves to a loopback address is not loopback.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>

#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/rel.h"
#include "utils/varlena.h"

#include "http.h"

/* longer API keys are refused (api_key_invalid) on every path */
#define HTTP_KEY_MAX			4096

/* settings */
static char *http_api_key_env_prefix = NULL;
static char *http_api_key_env_names = NULL;
static char *http_allowed_hosts = NULL;
static bool http_allow_http_keys = false;

/* A list setting must split into names. */
static bool
HttpCheckList(char **newval, void **extra, GucSource source)
{
	char	   *copy = pstrdup(*newval);
	List	   *items = NIL;
	bool		ok = SplitGUCList(copy, ',', &items);

	if (!ok)
		GUC_check_errdetail("List syntax is invalid.");
	list_free(items);
	pfree(copy);
	return ok;
}

/*
 * HttpPolicyInit
 *		Define the key-policy settings (superuser only).  Called from
 *		HttpInit.
 */
void
HttpPolicyInit(void)
{
	DefineCustomStringVariable("llm_canary.api_key_env_prefix",
							   "Sets the prefix of the server environment variables that may hold API keys.",
							   "api_key_env of canary_models must start with this prefix or be listed in llm_canary.api_key_env_names. Empty: no prefix is allowed.",
							   &http_api_key_env_prefix,
							   "LLM_CANARY_KEY_",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("llm_canary.api_key_env_names",
							   "Sets further server environment variables that may hold API keys.",
							   "A comma-separated list of exact names, allowed besides those with llm_canary.api_key_env_prefix.",
							   &http_api_key_env_names,
							   "",
							   PGC_SUSET,
							   GUC_LIST_INPUT,
							   HttpCheckList, NULL, NULL);
	DefineCustomStringVariable("llm_canary.allowed_hosts",
							   "Sets the hosts that models may be called at.",
							   "A comma-separated list of host names or addresses; *.example.com allows every subdomain of example.com. Empty: any host.",
							   &http_allowed_hosts,
							   "",
							   PGC_SUSET,
							   GUC_LIST_INPUT,
							   HttpCheckList, NULL, NULL);
	DefineCustomBoolVariable("llm_canary.allow_http_keys",
							 "Allows sending API keys over plain http:// to hosts that are not loopback.",
							 NULL,
							 &http_allow_http_keys,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);
}

/* Is name listed in the comma-separated setting list (exact, or case-insensitive)? */
static bool
HttpListed(const char *list, const char *name, bool nocase)
{
	char	   *copy;
	List	   *items = NIL;
	ListCell   *lc;
	bool		found = false;

	if (list == NULL || list[0] == '\0')
		return false;
	copy = pstrdup(list);
	if (SplitGUCList(copy, ',', &items))
	{
		foreach(lc, items)
		{
			const char *item = (const char *) lfirst(lc);
			size_t		ilen = strlen(item);
			size_t		nlen = strlen(name);

			if (nocase && ilen > 2 && item[0] == '*' && item[1] == '.')
			{
				/* *.example.com: a subdomain of example.com */
				if (nlen > ilen - 1 &&
					pg_strcasecmp(name + nlen - (ilen - 1), item + 1) == 0)
					found = true;
			}
			else if (nocase ? pg_strcasecmp(item, name) == 0 : strcmp(item, name) == 0)
				found = true;
			if (found)
				break;
		}
	}
	list_free(items);
	pfree(copy);
	return found;
}

/* May the environment variable name hold an API key? */
static bool
HttpKeyEnvAllowed(const char *name)
{
	size_t		plen = http_api_key_env_prefix ? strlen(http_api_key_env_prefix) : 0;

	if (plen > 0 && strncmp(name, http_api_key_env_prefix, plen) == 0 &&
		name[plen] != '\0')
		return true;
	return HttpListed(http_api_key_env_names, name, false);
}

/* A loopback host: localhost, 127.0.0.0/8, ::1 (host as libcurl gives it). */
static bool
HttpHostIsLoopback(const char *host)
{
	char		buf[64];
	size_t		len = strlen(host);
	struct in_addr a4;
	struct in6_addr a6;

	if (pg_strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	/* an IPv6 literal comes in brackets */
	if (len > 2 && len < sizeof(buf) && host[0] == '[' && host[len - 1] == ']')
	{
		memcpy(buf, host + 1, len - 2);
		buf[len - 2] = '\0';
		if (inet_pton(AF_INET6, buf, &a6) == 1)
			return IN6_IS_ADDR_LOOPBACK(&a6);
	}
	return false;
}

/* Is host listed in llm_canary.allowed_hosts (or is the list empty)? */
static bool
HttpHostAllowed(const char *host)
{
	char		buf[256];
	size_t		len = strlen(host);

	if (http_allowed_hosts == NULL || http_allowed_hosts[0] == '\0')
		return true;
	if (HttpListed(http_allowed_hosts, host, true))
		return true;
	/* [::1] may be listed as ::1 */
	if (len > 2 && len < sizeof(buf) && host[0] == '[' && host[len - 1] == ']')
	{
		memcpy(buf, host + 1, len - 2);
		buf[len - 2] = '\0';
		return HttpListed(http_allowed_hosts, buf, true);
	}
	return false;
}

/*
 * HttpModelPolicy
 *		May a request of model go to url?  Returns NULL, or one of the
 *		HTTP_ERR_* codes with *detail (palloc'd) saying why.  The URL is
 *		parsed by libcurl's own parser, so the host checked is the host
 *		libcurl connects to.  Never raises but for out of memory.
 */
const char *
HttpModelPolicy(const CanaryModel *model, const char *url, char **detail)
{
	CURLU	   *u = curl_url();
	char	   *scheme = NULL;
	char	   *host = NULL;
	const char *err = NULL;

	*detail = NULL;
	if (u == NULL ||
		curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
	{
		err = HTTP_ERR_HOST_NOT_ALLOWED;
		*detail = pstrdup("The URL of the request cannot be parsed.");
	}
	else if (!HttpHostAllowed(host))
	{
		err = HTTP_ERR_HOST_NOT_ALLOWED;
		*detail = psprintf("The host \"%s\" is not listed in llm_canary.allowed_hosts.", host);
	}
	else if (model->api_key_env != NULL && !HttpKeyEnvAllowed(model->api_key_env))
	{
		err = HTTP_ERR_KEY_ENV_NOT_ALLOWED;
		*detail = psprintf("The environment variable \"%s\" does not start with llm_canary.api_key_env_prefix (\"%s\") and is not listed in llm_canary.api_key_env_names.",
						   model->api_key_env,
						   http_api_key_env_prefix ? http_api_key_env_prefix : "");
	}
	else if (model->api_key_env != NULL && pg_strcasecmp(scheme, "https") != 0 &&
			 !http_allow_http_keys && !HttpHostIsLoopback(host))
	{
		err = HTTP_ERR_KEY_OVER_HTTP;
		*detail = psprintf("An API key is not sent over plain http:// to \"%s\", which is not a loopback address.",
						   host);
	}
	curl_free(scheme);
	curl_free(host);
	curl_url_cleanup(u);
	return err;
}

/* Is error one of the key policy's refusals? */
bool
HttpPolicyError(const char *error)
{
	return error != NULL &&
		(strcmp(error, HTTP_ERR_KEY_ENV_NOT_ALLOWED) == 0 ||
		 strcmp(error, HTTP_ERR_HOST_NOT_ALLOWED) == 0 ||
		 strcmp(error, HTTP_ERR_KEY_OVER_HTTP) == 0);
}

/*
 * Append "name: value" to *list; false on out of memory.  The line may hold
 * a secret, so it is wiped once libcurl has its own copy.
 */
static bool
HttpAppendHeader(struct curl_slist **list, const char *name, const char *value)
{
	char		line[HTTP_KEY_MAX + 64];
	struct curl_slist *l;

	snprintf(line, sizeof(line), "%s: %s", name, value);
	l = curl_slist_append(*list, line);
	explicit_bzero(line, sizeof(line));
	if (l == NULL)
		return false;
	*list = l;
	return true;
}

/*
 * HttpModelHeaders
 *		The request headers of a POST of model to url, with the API key,
 *		after the key policy allowed it (HttpModelPolicy).  Returns NULL and
 *		sets *headers (malloc'd by libcurl: curl_slist_free_all), or an
 *		error code with *headers NULL and *detail (palloc'd, when detail is
 *		not NULL): a policy refusal, api_key_missing, api_key_invalid (a
 *		line break, or longer than 4096 bytes), out_of_memory.  The key goes
 *		nowhere but into the header list.  Never raises but for out of
 *		memory.
 */
const char *
HttpModelHeaders(const CanaryModel *model, const char *url,
				 struct curl_slist **headers, char **detail)
{
	const char *key = NULL;
	const char *err;
	char	   *why = NULL;
	struct curl_slist *h;
	bool		ok = true;

	*headers = NULL;
	if (detail)
		*detail = NULL;
	err = HttpModelPolicy(model, url, &why);
	if (err == NULL && model->api_key_env != NULL)
	{
		key = getenv(model->api_key_env);
		if (key == NULL || key[0] == '\0')
		{
			err = "api_key_missing";
			why = psprintf("The environment variable \"%s\" of the server is not set.",
						   model->api_key_env);
		}
		else if (strpbrk(key, "\r\n") != NULL || strlen(key) > HTTP_KEY_MAX)
		{
			err = "api_key_invalid";
			why = psprintf("The environment variable \"%s\" holds a line break or more than %d bytes.",
						   model->api_key_env, HTTP_KEY_MAX);
		}
	}
	if (err != NULL)
	{
		if (detail)
			*detail = why;
		return err;
	}

	h = HttpJsonHeaders();
	ok = h != NULL;
	if (model->provider == CANARY_PROVIDER_ANTHROPIC)
	{
		ok = ok && HttpAppendHeader(&h, "anthropic-version", "2023-06-01");
		if (key != NULL)
			ok = ok && HttpAppendHeader(&h, "x-api-key", key);
	}
	else if (key != NULL)
	{
		char		bearer[HTTP_KEY_MAX + 16];

		snprintf(bearer, sizeof(bearer), "Bearer %s", key);
		ok = ok && HttpAppendHeader(&h, "Authorization", bearer);
		explicit_bzero(bearer, sizeof(bearer));
	}
	if (!ok)
	{
		if (h != NULL)
			curl_slist_free_all(h);
		return "out_of_memory";
	}
	*headers = h;
	return NULL;
}

/*
 * HttpRedactKey
 *		Overwrite, in place, every occurrence of model's API key in s with
 *		'*'.  An upstream (or a proxy in front of it) may echo the request's
 *		headers in an error message or even in an answer; what it sends back
 *		goes to the client, into errors that the server logs, and into
 *		canary_shadow, none of which may hold the key.  Keys shorter than 8
 *		bytes are left alone: they are not secrets worth mangling text for.
 *		Only the exact key is found, not a provider's shortened rendering of
 *		it.  Allocates nothing; s may be NULL.
 */
void
HttpRedactKey(const CanaryModel *model, char *s)
{
	const char *key;
	size_t		keylen;
	char	   *hit;

	if (s == NULL || model->api_key_env == NULL)
		return;
	key = getenv(model->api_key_env);
	if (key == NULL || (keylen = strlen(key)) < 8)
		return;
	while ((hit = strstr(s, key)) != NULL)
		memset(hit, '*', keylen);
}

/*
 * HttpReportPolicy
 *		Raise the error (SQLSTATE 42501) for a request of model model_name
 *		that the key policy refused with err (an HTTP_ERR_* code) and
 *		detail.
 */
void
HttpReportPolicy(const char *model_name, const char *err, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("model \"%s\" may not be called with this base_url and api_key_env",
					model_name),
			 detail ? errdetail("%s", detail) : 0,
			 errhint("%s",
					 strcmp(err, HTTP_ERR_KEY_ENV_NOT_ALLOWED) == 0 ?
					 "Keep the key in a variable whose name starts with llm_canary.api_key_env_prefix, or ask a superuser to list the variable in llm_canary.api_key_env_names." :
					 strcmp(err, HTTP_ERR_HOST_NOT_ALLOWED) == 0 ?
					 "Ask a superuser to add the host to llm_canary.allowed_hosts." :
					 "Use an https:// base_url, or ask a superuser to set llm_canary.allow_http_keys.")));
}

/*
 * canary_models_check_policy() RETURNS trigger
 *		BEFORE INSERT OR UPDATE on canary_models: the key policy, checked
 *		when a row is written, so that a model that could never be called
 *		fails at once with SQLSTATE 42501.  The settings are superuser-only,
 *		so the session's values are the ones a superuser chose.
 */
PG_FUNCTION_INFO_V1(canary_models_check_policy);
Datum
canary_models_check_policy(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	TupleDesc	desc;
	CanaryModel model;
	char	   *url;
	char	   *name;
	char	   *detail;
	const char *err;
	int			attno;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("canary_models_check_policy must be a BEFORE INSERT OR UPDATE row trigger")));
	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;
	desc = RelationGetDescr(trigdata->tg_relation);

	memset(&model, 0, sizeof(model));
	attno = SPI_fnumber(desc, "base_url");
	url = attno > 0 ? SPI_getvalue(tuple, desc, attno) : NULL;
	attno = SPI_fnumber(desc, "api_key_env");
	model.api_key_env = attno > 0 ? SPI_getvalue(tuple, desc, attno) : NULL;
	attno = SPI_fnumber(desc, "name");
	name = attno > 0 ? SPI_getvalue(tuple, desc, attno) : NULL;
	strlcpy(model.name, name ? name : "", sizeof(model.name));

	if (url != NULL && (err = HttpModelPolicy(&model, url, &detail)) != NULL)
		HttpReportPolicy(model.name, err, detail);

	return PointerGetDatum(tuple);
}
