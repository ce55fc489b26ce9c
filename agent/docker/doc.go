// Package docker is latch's container driver (spec section 9): it runs the
// services of a release as containers of an engine that speaks the Docker
// Engine API 1.41 (balena-engine, dockerd 20.10 or newer), over a unix
// socket or plain TCP.
//
// Guarantees:
//   - latch acts only on what it labelled. Every container it creates
//     carries io.latch.app, io.latch.service and io.latch.release; every
//     operation on an existing container checks them first and refuses a
//     container without them (a container of the same name that latch did
//     not create is an error, never a reuse). Images are loaded, inspected
//     and never removed.
//   - Every step can be repeated after a crash with the same end state:
//     Create reuses latch's own container of that name and release (and
//     replaces it when its configuration differs), Stop of a stopped or
//     missing container, Remove of a missing one and Start of a running one
//     succeed.
//   - A container kept for rollback does not come back by itself: Stop sets
//     its restart policy to "no" and Start restores the policy of its spec
//     (kept in the io.latch.restart label).
//   - Volumes are never removed: named volumes outlive releases.
//   - Each container sees its service's lock directory at /tmp/balena and
//     /tmp/resin, with BALENA_APP_LOCK_PATH and RESIN_APP_LOCK_PATH set to
//     /tmp/balena/updates.lock and LATCH_APP, LATCH_SERVICE, LATCH_RELEASE.
//
// # Steps of an apply
//
// For each service of a release, in Order of depends_on: Create the new
// container (it touches nothing that runs, so it may come before the
// locks), Stop the old one (kept), Start the new one, Health. On failure,
// Rollback (remove the new, start the old). A dropped service is Remove'd.
// After a crash, Find lists what latch made for an app; every step can be
// run again from the journal.
//
// # Caveats
//
//   - Image: an image loaded from a tarball has no repository digest in
//     the engine, so Service.Image names it by its ID (sha256 of its
//     config), as LoadImage reports it; Spec.Image is used only when it is
//     empty.
//   - Container names are latch_<app>_<service>_<release>: app "a_b" with
//     service "c" and app "a" with service "b_c" share a name; the labels
//     tell them apart, and the second one is refused (ErrForeign), never
//     confused with the first.
//   - Stop returns when the container has exited, up to its grace period
//     later: give it a context that outlives the grace.
//   - A privileged container needs every capability in latch's bounding
//     set (the engine fails to start it otherwise).
//
// The package imports nothing from the rest of latch; the agent adapts its
// types.
package docker

import "errors"

// Errors of this package. Callers test them with errors.Is.
var (
	// ErrInvalid: a bad spec, name or engine address.
	ErrInvalid = errors.New("invalid")
	// ErrCycle: depends_on makes a cycle.
	ErrCycle = errors.New("dependency cycle")
	// ErrNotFound: the engine has no such container or image (its 404).
	ErrNotFound = errors.New("not found")
	// ErrConflict: the engine refused because of a conflict (its 409).
	ErrConflict = errors.New("conflict")
	// ErrForeign: a container of the name latch wants is not latch's (its
	// labels are missing or name another app, service or release); latch
	// does not touch it.
	ErrForeign = errors.New("container not created by latch")
	// ErrUnhealthy: a container did not stay up, or its health check failed.
	ErrUnhealthy = errors.New("container unhealthy")
)
