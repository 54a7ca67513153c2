// A Lambda function in Java with only the JDK: the program is its own custom runtime. It asks the
// Runtime API (AWS_LAMBDA_RUNTIME_API) for the next event, runs handle, and posts the result back,
// forever. `make examples` compiles it into classes/; the `bootstrap` script starts the JVM.
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class Hello {
    static final String API = "http://" + System.getenv("AWS_LAMBDA_RUNTIME_API") + "/2018-06-01/runtime";
    static final Pattern NAME = Pattern.compile("\"name\"\\s*:\\s*\"([^\"\\\\]*)\"");

    static String handle(String event, long deadlineMs) {
        Matcher m = NAME.matcher(event);
        String name = m.find() ? m.group(1) : "world";
        if (name.equals("fail")) {
            throw new IllegalArgumentException("asked to fail");
        }
        System.out.println("greeting " + name + " with " + (deadlineMs - System.currentTimeMillis()) + " ms left");
        return "{\"statusCode\": 200, \"headers\": {\"Content-Type\": \"text/plain\"}, \"body\": \"Hello "
                + name + " from Java\"}";
    }

    public static void main(String[] args) throws IOException {
        while (true) {
            HttpURLConnection next = (HttpURLConnection) new URL(API + "/invocation/next").openConnection();
            String event = read(next.getInputStream());
            String id = next.getHeaderField("Lambda-Runtime-Aws-Request-Id");
            long deadline = Long.parseLong(next.getHeaderField("Lambda-Runtime-Deadline-Ms"));
            try {
                post("/invocation/" + id + "/response", handle(event, deadline), null);
            } catch (RuntimeException e) {
                String doc = "{\"errorMessage\": \"" + e.getMessage().replace("\"", "'") + "\", \"errorType\": \""
                        + e.getClass().getSimpleName() + "\", \"stackTrace\": []}";
                post("/invocation/" + id + "/error", doc, e.getClass().getSimpleName());
            }
        }
    }

    static void post(String path, String body, String errorType) throws IOException {
        HttpURLConnection c = (HttpURLConnection) new URL(API + path).openConnection();
        c.setRequestMethod("POST");
        c.setDoOutput(true);
        c.setRequestProperty("Content-Type", "application/json");
        if (errorType != null) {
            c.setRequestProperty("Lambda-Runtime-Function-Error-Type", errorType);
        }
        byte[] data = body.getBytes(StandardCharsets.UTF_8);
        c.setFixedLengthStreamingMode(data.length);
        try (OutputStream out = c.getOutputStream()) {
            out.write(data);
        }
        read(c.getInputStream());
    }

    static String read(InputStream in) throws IOException {
        try (in) {
            ByteArrayOutputStream buf = new ByteArrayOutputStream();
            in.transferTo(buf);
            return buf.toString(StandardCharsets.UTF_8);
        }
    }
}
