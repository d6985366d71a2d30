// Starts Swagger UI on our own OpenAPI document (kept out of the HTML: the CSP forbids inline scripts).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
});
