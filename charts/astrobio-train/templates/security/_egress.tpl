{{/* egress rules from {peers, ports, dns}: DNS (unless dns=false), then the ports to the peers (any when empty) */}}
{{- define "astrobio.egressRules" -}}
{{- if ne (toString .dns) "false" }}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}
- ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .peers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
