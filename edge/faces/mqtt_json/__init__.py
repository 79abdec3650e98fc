"""The JSON MQTT face: transport (offline queue, in-order resend), topic table, DeviceApi, JSON Schemas."""
