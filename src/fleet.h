/*-------------------------------------------------------------------------
 *
 * fleet.h
 *	  Many application databases, one rollout: the control database's
 *	  configuration flows down to the members over logical replication, the
 *	  members' evidence flows up, and a member that stops hearing from the
 *	  control database fails safe.  See src/fleet.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_FLEET_H
#define LLM_CANARY_FLEET_H

#include "routing.h"

typedef enum CanaryFleetRole
{
	CANARY_FLEET_STANDALONE,
	CANARY_FLEET_CONTROL,
	CANARY_FLEET_MEMBER
} CanaryFleetRole;

/* llm_canary.c: settings (defined only while preloading) and shared memory */
extern void FleetInit(void);
extern void FleetRequestShmem(void);
extern void FleetInitShmem(void);

/* routing.c: the fail-safe, after every routing decision */
extern void FleetRouteOverride(const CanaryRollout *r, RouteDecision *d);

/* call.c, shadow_worker.c: no shadow calls while the fail-safe is on */
extern bool FleetFailSafeActive(void);

/* killswitch.c and worker.c: only a standalone or control database judges */
extern bool FleetJudgesRollouts(void);
extern void FleetRequireJudge(const char *what);

/* killswitch.c: canary_fleet_rollups on the control, else canary_rollups */
extern const char *FleetRollupsTable(void);

/* worker.c: heartbeat (control) or status report (member), SPI connected */
extern long FleetWorkerIntervalMs(void);
extern void FleetWorkerStep(const char *schema);

#endif							/* LLM_CANARY_FLEET_H */
