package fleet

import "github.com/eclipse/paho.golang/paho"

func pahoPublish(topic string, payload []byte, retain bool) *paho.Publish {
	return &paho.Publish{Topic: topic, QoS: 1, Retain: retain, Payload: payload}
}
