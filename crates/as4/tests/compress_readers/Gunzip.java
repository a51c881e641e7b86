// Reads gzip on stdin with java.util.zip.GZIPInputStream (the reader Domibus and phase4
// use for AS4 compression) and writes what it inflates to stdout.
import java.io.InputStream;
import java.util.zip.GZIPInputStream;

public class Gunzip {
    public static void main(String[] args) throws Exception {
        try (InputStream in = new GZIPInputStream(System.in, 65536)) {
            in.transferTo(System.out);
        }
        System.out.flush();
    }
}
