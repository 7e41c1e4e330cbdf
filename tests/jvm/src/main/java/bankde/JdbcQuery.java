package bankde;

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

/**
 * Runs one query through ClickHouse's JDBC driver and prints the rows tab-separated.
 * Usage: JdbcQuery URL USER SQL; the password comes from BANKDE_CH_PASSWORD (never argv).
 * A SQLException prints "error <code> <message>" and exits 3, so a test can check the code.
 */
public final class JdbcQuery {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", System.getenv("BANKDE_CH_PASSWORD"));
        try (Connection conn = DriverManager.getConnection(args[0], props);
             Statement st = conn.createStatement()) {
            if (!st.execute(args[2])) {
                System.out.println("ok " + st.getUpdateCount());
                return;
            }
            try (ResultSet rs = st.getResultSet()) {
                ResultSetMetaData md = rs.getMetaData();
                while (rs.next()) {
                    StringBuilder line = new StringBuilder();
                    for (int i = 1; i <= md.getColumnCount(); i++) {
                        if (i > 1) line.append('\t');
                        line.append(rs.getString(i));
                    }
                    System.out.println(line);
                }
            }
        } catch (SQLException e) {
            System.out.println("error " + e.getErrorCode() + " " + e.getMessage());
            System.exit(3);
        }
    }
}
