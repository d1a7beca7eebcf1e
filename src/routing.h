/*-------------------------------------------------------------------------
 *
 * routing.h
 *	  Sticky per-user routing: the article's SHA-256 bucket, the stage rules,
 *	  the kill switch and session pins.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_ROUTING_H
#define LLM_CANARY_ROUTING_H

#include "config.h"

typedef struct RouteDecision
{
	const char *model;			/* model that serves the user (palloc'd) */
	bool		canary;			/* true: the new model's cohort */
	bool		pinned;			/* decided by a session pin */
} RouteDecision;

extern uint32 RoutingBucket(const char *salt, int salt_len,
							const char *user_id, int user_len);
extern void RouteDecide(const CanaryRollout *rollout, const char *user_id,
						int user_len, const char *session_id,
						RouteDecision *decision);
extern void RoutingCheckUserId(text *user_id_arg, bool isnull);

#endif							/* LLM_CANARY_ROUTING_H */
