"""What a test runs beside the device: the broker (mosquitto or amqtt) and its protocol log,
device certificates, the MQTT observer, the fault proxy, the OTA server and a TLS front."""
