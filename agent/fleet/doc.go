// Package fleet is latch's channel to a fleet over MQTT 5 (section 11 of the contract): the
// device side, which keeps a session with a broker, announces the device online and offline
// (retained, with a will), publishes the device's state and the results of commands, and hands
// targets and commands to the agent; and the operator side, which reads a fleet's retained state,
// publishes targets and sends a command and waits for its result.
//
// Topics (all QoS 1):
//
//	latch/fleets/<fleet>/target   retained, operator   {"target": <document>, "sig": <bundle>}
//	latch/devices/<id>/target     retained, operator   a target for this device alone
//	latch/devices/<id>/state      retained, agent      the agent's /v1/device object
//	latch/devices/<id>/online     retained, agent      "1" on connect, "0" as its will
//	latch/devices/<id>/cmd        operator             {"id","action",...}
//	latch/devices/<id>/result     agent                {"id","status","message"}
//
// The package is a leaf: it knows nothing of targets, locks or the journal. It guarantees:
//
//   - Start never waits for a broker: the device keeps trying, with a jittered, bounded backoff,
//     and reports every failed attempt to Handlers.OnError and in Device.Status.
//   - The session survives disconnections (clean start false, a session expiry), so a command
//     sent while the device is away is delivered when it comes back. A message is acknowledged
//     to the broker only after its handler returns, so a message is delivered at least once:
//     retained targets again on every connect, a command again after a lost acknowledgement.
//     The agent journals command ids to run each once.
//   - The newest state is published retained at most once a StateInterval (one second), and
//     again on every connect, so the broker always ends up holding the newest one.
//   - A message over MaxPayload, a command that does not parse strictly, or a target that is not
//     {"target","sig"} never reaches a handler; a refused command whose id can be read gets a
//     result with status "refused" naming what is wrong.
//   - Every state and online message carries the user property "fleet" with the device's fleet
//     name, which is how Status tells the devices of one fleet apart.
//
// # Caveats
//
// Handlers run one at a time, in the order the broker delivered the messages, on the client's
// receive path: a handler must return promptly (hand the work to the agent's loop), or the
// connection's keep-alive fails and the client reconnects.
//
// The broker's access control is what stops one device from writing another's topics; with
// Mosquitto, use_identity_as_username and an acl_file with
// "pattern readwrite latch/devices/%u/#" and "pattern read latch/fleets/#".
package fleet
