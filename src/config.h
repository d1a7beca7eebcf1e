/*-------------------------------------------------------------------------
 *
 * config.h
 *	  Per-backend cache of the rollouts (canary_config) and the upstream
 *	  models (canary_models).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_CONFIG_H
#define LLM_CANARY_CONFIG_H

#include "postgres.h"

#include "nodes/pg_list.h"

typedef enum CanaryStage
{
	CANARY_STAGE_SHADOW,
	CANARY_STAGE_RAMP_1,
	CANARY_STAGE_RAMP_5,
	CANARY_STAGE_RAMP_25,
	CANARY_STAGE_FULL
} CanaryStage;

typedef enum CanaryProvider
{
	CANARY_PROVIDER_OPENAI,
	CANARY_PROVIDER_ANTHROPIC
} CanaryProvider;

/* One row of canary_config, as routing and the call path need it. */
typedef struct CanaryRollout
{
	char		name[NAMEDATALEN];
	CanaryStage stage;
	const char *stage_name;		/* static string */
	int32		percent_x100;	/* percent_new * 100: 0 .. 10000 */
	bool		armed;			/* false: kill switch tripped */
	char	   *old_model;		/* NULL when not configured */
	char	   *new_model;
	char	   *salt;
	int			salt_len;
	double		shadow_sample_rate;
	bool		fallback_to_old;
	char	   *session_ttl;	/* interval, as text, for SQL */
	char	   *shadow_embedding_model;	/* NULL: lexical shadow similarity */

	/* the kill switch's thresholds (killswitch.c) */
	int			window_seconds;
	double		error_rate_threshold;
	double		p95_ratio_threshold;
	double		refusal_delta_threshold;
	double		thumbs_down_ratio_threshold;
	int64		min_samples;
	double		significance;
	bool		raw_rules;
	int			confirm_windows;
} CanaryRollout;

/* One row of canary_models. */
typedef struct CanaryModel
{
	char		name[NAMEDATALEN];
	CanaryProvider provider;
	char	   *base_url;
	char	   *model;			/* the provider's model id */
	int			timeout_ms;
	int			connect_timeout_ms;
	int			max_retries;
	int			max_tokens;		/* 0: not configured */
	bool		use_max_completion_tokens;
	bool		has_temperature;
	double		temperature;
	char	   *system_prompt;	/* NULL when not configured */
	double		price_input_per_1k;
	double		price_output_per_1k;
	char	   *api_key_env;	/* NULL: no key sent */
} CanaryModel;

extern void ConfigCacheInit(void);
extern const CanaryRollout *ConfigGetRollout(const char *name);
extern const CanaryRollout *ConfigLookupRollout(const char *name, bool missing_ok);
extern List *ConfigRolloutNames(void);
extern const CanaryModel *ConfigGetModel(const char *name);
extern const CanaryModel *ConfigLookupModel(const char *name, bool missing_ok);
extern const char *ConfigSchemaName(void);
extern Oid	ConfigExtensionOwner(void);
extern char **ConfigGetRefusalPatterns(int *npatterns);
extern const char *CanaryStageName(CanaryStage stage);

#endif							/* LLM_CANARY_CONFIG_H */
